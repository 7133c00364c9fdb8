"""RDN x4 (seed 001's Keras 3 ``RDN_mse.keras``): spec, Flax module and importer.

Architecture (read from the file, see ``../shared/reference/seed001/README.md``); every Conv2D is stride 1,
"same" zero padding, and every concatenation is on the channel axis in the order written::

    sfe  = relu(conv3x3_32(x))
    4 residual dense blocks, input h (sfe for block 1, else the previous block's output):
        c = h; 3 times: c = concat[c, relu(conv3x3_16(c))]       c = [h, d1, d2, d3]
        out = relu(conv1x1_64(concat[h, c]))                     h appears twice; no residual addition
    gff  = relu(conv1x1_64(concat[rdb1, rdb2, rdb3, rdb4]))
    g    = relu(conv3x3_64(concat[sfe, gff]))
    [Dropout]                                                    (our MC version only)
    g    = relu(ConvTranspose 64, 3x3, stride 2, Keras "same")   H -> 2H
    g    = relu(ConvTranspose 64, 3x3, stride 2, Keras "same")   2H -> 4H
    y    = sigmoid(conv3x3_3(g))

RGB in [0, 1] in, (0, 1) out. 314,115 parameters.

**Keras's stride-2 "same" transposed conv**, with the stored kernel ``K[t, u, out, in]``:
``y[2i + t, 2j + u] += x[i, j] K[t, u]`` for ``t, u = 0..2``, keeping output rows/columns ``0..2H-1`` (the
full result's last row and column are dropped: the padding is asymmetric). :func:`conv_transpose_same`
computes it explicitly, by output phase: even output rows take ``K[0]`` at input row ``i`` and ``K[2]`` at
``i - 1``, odd rows take ``K[1]`` at ``i``; the same per column. That is the dilated-convolution recipe
(dilate by 2, pad 2 before and 1 after, correlate with the flipped kernel) without its multiplications by
zero (9 taps per 4 outputs instead of 36). Output ``2i + t`` is at global position ``2 * origin + ...``, so
the x2 and x4 grids stay aligned with the image, and the engine's blocks equal the whole image.

**Dropout** (our MC version): one layer on ``g``, after the global feature fusion (GFF and the global 3x3
conv) and before the upsampling, on the LR grid (64 channels). ``prefix`` is everything up to it (the
dense blocks run once per block), ``head`` the dropout, the two transposed convs and the output conv.

Importing this file does not import JAX.
"""

from __future__ import annotations

import io
import zipfile
from functools import cache

import numpy as np

from .spec import ModelSpec

SCALE = 4
# Chosen on the 10 held-out BSD200 training images by a rule written before the runs
# (training/checkpoints/rdn-x4/RATE_CHOICE.md): of 0.05 / 0.1 / 0.2 after 800 steps, all within 0.03 dB of
# the best MC-16 PSNR; 0.2 ranked patches best (Spearman 0.43) and 0.1 within 0.02 of it (0.42), so the lower
# rate. The original has no dropout; with its weights the port runs with dropout off.
DROPOUT_RATE = 0.1
N_BLOCKS, N_DENSE, GROWTH = 4, 3, 16


def _param_shapes() -> dict:
    shapes = {"sfe": ((3, 3, 3, 32), (32,))}
    width = 32
    for b in range(1, N_BLOCKS + 1):
        for d in range(1, N_DENSE + 1):
            shapes[f"rdb{b}_dense{d}"] = ((3, 3, width + (d - 1) * GROWTH, GROWTH), (GROWTH,))
        shapes[f"rdb{b}_fusion"] = ((1, 1, 2 * width + N_DENSE * GROWTH, 64), (64,))
        width = 64
    shapes["gff"] = ((1, 1, 64 * N_BLOCKS, 64), (64,))
    shapes["global_conv"] = ((3, 3, 32 + 64, 64), (64,))
    # transposed convs: Keras's layout (kh, kw, out, in), as stored in the file
    shapes["up1"] = ((3, 3, 64, 64), (64,))
    shapes["up2"] = ((3, 3, 64, 64), (64,))
    shapes["output"] = ((3, 3, 64, 3), (3,))
    return shapes


PARAM_SHAPES = _param_shapes()
# The file's h5 groups (``layers/<group>/vars/{0,1}``, Keras's per-class counters) in our layer order.
_KERAS_GROUPS = dict(
    zip(
        PARAM_SHAPES,
        [f"conv2d_{i}" if i else "conv2d" for i in range(19)] + ["conv2d_transpose", "conv2d_transpose_1", "conv2d_19"],
    )
)
# Receptive-field radius in LR pixels. LR grid: sfe 1 + 4 blocks x 3 dense 3x3 convs + global conv 1 = 14
# (the 1x1 convs add nothing). Upsampling: output pixels 4P .. 4P + 3 of LR pixel P read, through the 3x3
# output conv, x4 pixels 4P - 1 .. 4P + 4. A stride-2 transposed conv's even output 2m reads inputs m - 1
# and m, its odd output 2m + 1 reads m only; so those read x2 pixels 2P - 1 .. 2P + 2, which read g at
# P - 1 .. P + 1. Total 14 + 1 = 15 (tests/test_ports.py measures it with gradients).
HALO = 14 + 1


def conv_transpose_same(x, kernel, bias):
    """Keras ``Conv2DTranspose(strides=2, padding="same")``: (N, H, W, in) -> (N, 2H, 2W, out).

    ``kernel`` is Keras's (kh=3, kw=3, out, in). Computed by output phase (see the module docstring):
    ``y[2i + a, 2j + b] = sum`` over the taps ``(t, r)`` of phase ``a`` (``(0, i), (2, i - 1)`` for even,
    ``(1, i)`` for odd) and likewise for columns, of ``x[r_row, r_col] @ K[t, u].T``.
    """
    import jax
    import jax.numpy as jnp

    n, h, w, _ = x.shape
    k = jnp.transpose(kernel, (0, 1, 3, 2))  # (kh, kw, in, out): HWIO
    # phase kernels over the input window (i - 1, i): even phase (K[2] at i - 1, K[0] at i), odd (-, K[1])
    taps = {0: (2, 0), 1: (None, 1)}
    xp = jnp.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)))  # row/col i - 1 = -1 is zero: outside the input
    dn = ("NHWC", "HWIO", "NHWC")
    phases = []
    for a in (0, 1):
        row = []
        for b in (0, 1):
            rows = [t for t in taps[a] if t is not None]
            cols = [u for u in taps[b] if u is not None]
            sub = k[jnp.asarray(rows)][:, jnp.asarray(cols)]  # (len rows, len cols, in, out)
            # the window (len rows x len cols) ends at input (i, j): drop the leading pad for 1-tap phases
            window = xp[:, 2 - len(rows) :, 2 - len(cols) :]
            y = jax.lax.conv_general_dilated(window, sub, (1, 1), "VALID", dimension_numbers=dn)
            row.append(y[:, :h, :w])
        phases.append(jnp.stack(row, axis=3))  # (N, H, W, 2 [b], out)
    y = jnp.stack(phases, axis=2)  # (N, H, 2 [a], W, 2 [b], out)
    return y.reshape(n, 2 * h, 2 * w, -1) + bias


@cache
def module_class():
    """The Flax module class (imports Flax on first call)."""
    import flax.linen as nn
    import jax.numpy as jnp

    from .dropout import KeyedDropout, SplitModel

    class KerasConvTranspose(nn.Module):
        """Keras's stride-2 "same" transposed conv with its stored kernel layout (kh, kw, out, in)."""

        features: int

        @nn.compact
        def __call__(self, x):
            kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, self.features, x.shape[-1]))
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            return conv_transpose_same(x, kernel, bias)

    class RDN(SplitModel):
        dropout_rate: float = DROPOUT_RATE

        def setup(self):
            convs = {}
            for name, (kshape, _) in PARAM_SHAPES.items():
                if name.startswith("up"):
                    convs[name] = KerasConvTranspose(kshape[2], name=name)
                else:
                    convs[name] = nn.Conv(kshape[3], kshape[:2], padding="SAME", name=name)
            self.convs = convs
            self.drop = KeyedDropout(self.dropout_rate, 0)

        def _conv(self, name, x, grid, factor=1):
            conv = self.convs[name]
            if PARAM_SHAPES[name][0][0] > 1:  # spatial: zero padding at the image's true border only
                x = grid.inside(x, factor)
            return nn.relu(conv(x))

        def prefix(self, x, grid):
            sfe = self._conv("sfe", x, grid)
            h, outs = sfe, []
            for b in range(1, N_BLOCKS + 1):
                c = h
                for d in range(1, N_DENSE + 1):
                    c = jnp.concatenate([c, self._conv(f"rdb{b}_dense{d}", c, grid)], axis=-1)
                h = self._conv(f"rdb{b}_fusion", jnp.concatenate([h, c], axis=-1), grid)
                outs.append(h)
            gff = self._conv("gff", jnp.concatenate(outs, axis=-1), grid)
            return self._conv("global_conv", jnp.concatenate([sfe, gff], axis=-1), grid)

        def head(self, h, grid, sample=None):
            h = self.drop(h, grid, sample)
            h = nn.relu(self.convs["up1"](grid.inside(h)))
            h = nn.relu(self.convs["up2"](grid.inside(h, 2)))
            return nn.sigmoid(self.convs["output"](grid.inside(h, 4)))

    return RDN


def import_keras(path) -> dict[str, np.ndarray]:
    """The original ``RDN_mse.keras`` (a Keras 3 zip): ``model.weights.h5``'s ``layers/<group>/vars/{0,1}``.

    Only datasets are read: ``config.json`` is never evaluated.

    Raises
    ------
    ValueError
        When the file is not a ``.keras`` archive with weights, or its layers are not this architecture's.
    """
    try:
        import h5py
    except ImportError:
        raise ValueError(
            "reading Keras .keras weights needs h5py: pip install 'napari-sr-uncertainty[keras]'"
        ) from None
    try:
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" not in archive.namelist():
                raise ValueError(
                    "not a Keras 3 .keras archive: it has no model.weights.h5 "
                    f"(members: {', '.join(archive.namelist()[:5]) or 'none'})"
                )
            data = archive.read("model.weights.h5")
    except zipfile.BadZipFile as exc:
        raise ValueError(f"not a Keras 3 .keras archive (a zip file): {exc}") from None
    arrays: dict[str, np.ndarray] = {}
    problems = []
    try:
        with h5py.File(io.BytesIO(data), "r") as h5:
            layers = h5.get("layers")
            if layers is None:
                raise ValueError("not a Keras 3 weights file: model.weights.h5 has no 'layers' group")
            for name, group in _KERAS_GROUPS.items():
                kshape, bshape = PARAM_SHAPES[name]
                node = layers.get(f"{group}/vars")
                if node is None or "0" not in node or "1" not in node:
                    problems.append(f"no layer {group}")
                    continue
                kernel, bias = np.asarray(node["0"], np.float32), np.asarray(node["1"], np.float32)
                if kernel.shape != kshape or bias.shape != bshape:
                    problems.append(f"{group} has shape {kernel.shape}, expected {kshape}")
                    continue
                arrays[f"{name}/kernel"], arrays[f"{name}/bias"] = kernel, bias
            extra = sorted(g for g in layers if g.startswith("conv2d") and g not in _KERAS_GROUPS.values())
            if extra:
                problems.append(f"unexpected layers {', '.join(extra)}")
    except OSError as exc:
        raise ValueError(f"model.weights.h5 is not a readable HDF5 file ({exc})") from None
    if problems:
        raise ValueError("not an rdn-x4 model (RDN_mse.keras): " + "; ".join(problems[:6]))
    return arrays


SPEC = ModelSpec(
    id="rdn-x4",
    system="RDN x4 (seed 001, Keras)",
    description="RDN x4, RGB: 4 residual dense blocks, two stride-2 transposed convs, sigmoid; dropout before upsampling",
    scale=SCALE,
    colour="rgb",
    halo=HALO,
    dropout_layers=1,
    dropout_rate=DROPOUT_RATE,
    param_shapes=PARAM_SHAPES,
    module=lambda: module_class()(),
    default_weights="rdn_x4.msgpack",  # ours: trained here with MC dropout, calibrated (README)
    importers={".keras": import_keras},
    max_channels=64,  # widest map on the output grid (the memory estimate's unit); LR concatenations reach 256
    auto_uncertainty="mc-tta",  # better than plain MC dropout on every held-out measure (README, MC dropout x TTA)
)
