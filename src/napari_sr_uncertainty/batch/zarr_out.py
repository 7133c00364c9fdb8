"""Huge 2D images: block tasks across the workers, written in parallel to OME-Zarr, bounded memory per task.

An image is split into tiles of ``tile`` x ``tile`` LR pixels (a multiple of the engine's 64-pixel block)
on the grid anchored at the image origin. A tile task reads its pixels plus the model's halo from the
input (Zarr / OME-Zarr with ``zarr``, TIFF through tifffile's Zarr store, ``.npy`` memory-mapped), scales
them with the range of the whole image (found first by band tasks), runs exactly the engine's fixed
64-pixel blocks with their global positions (so dropout masks and the zero padding at the true image
border are those of the whole image), and writes its chunk of every output. The dihedral-view methods
(``tta``, ``mc-tta``) run, for each view, that view's blocks covering the tile at their positions in the
view, and pool the views as the single-process run does. The results are the single-process engine's, bit
for bit (tested against ``napari-sr-uncertainty IMAGE``'s TIFFs).

Output, ``OUTDIR/<stem>/`` (written into a staging sibling by the workers, moved into place when done)::

    mean.ome.zarr/   std.ome.zarr/   sigma.ome.zarr/ (weights with a calibration)
    summary.json     provenance, normalisation, tiles, uncertainty statistics, peak worker memory

Each ``*.ome.zarr`` is an OME-NGFF 0.4 image (Zarr format 2, readable by napari-ome-zarr, ome-zarr-py,
Fiji/MoBIE, ...): multiscales metadata with levels ``0`` (full resolution, float32, the input's units like
the CLI's TIFFs; ``(c, y, x)`` for colour), ``1``, ``2``, ... (2x2 means) until the image fits in one chunk;
chunks are one tile's output, so no two tasks write the same chunk.

Why zarr and not ome-zarr-py: zarr-python is the format's reference implementation and reads/writes every
array here; the OME part is a JSON attribute (``multiscales``) read and written through zarr's attribute
API, so a second library (ome-zarr-py pulls in aiohttp/requests and follows zarr's API with a lag) adds
nothing. TIFF goes through ``tifffile.imread(aszarr=True)``, tifffile's own Zarr store, which reads only the
strips/tiles a task needs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core.imaging import (
    InputError,
    Normalization,
    choose_normalization,
    image_layout,
    model_channels,
    normalize_block,
    scan_values,
)
from ..core.pipeline import (
    SROptions,
    _LayoutWriter,
    estimate_memory,
    format_size,
    library_versions,
    std_kind,
)
from ..models.mc import DEFAULT_CHUNK
from .inputs import BatchInput, is_zarr

HIST_BINS = 1 << 16
HIST_MAX = 1.0  # model units; larger values go into the last bin
TIFF_SUFFIXES = (".tif", ".tiff")


# --------------------------------------------------------------------------------------------- input


class Source:
    """A 2D image (``(H, W)`` or ``(H, W, C)``) in a Zarr array, a TIFF or a ``.npy``, read by region."""

    def __init__(self, array, axes: str | None, name: str):
        self.array, self.name = array, name
        shape = tuple(int(s) for s in array.shape)
        if axes is None:
            axes = "yx" if len(shape) == 2 else "yxc"
        axes = axes.lower().replace("s", "c")
        if len(axes) != len(shape):
            raise InputError(f"{name}: axes {axes!r} do not match the shape {shape}")
        self.index = []
        kept = []
        for axis, size in zip(axes, shape):
            if axis in "yxc":
                self.index.append(slice(None))
                kept.append(axis)
            elif size == 1:
                self.index.append(0)
            else:
                raise InputError(f"{name}: a huge image must be one 2D plane; axis {axis!r} has {size} entries")
        if sorted(kept) not in (["x", "y"], ["c", "x", "y"]):
            raise InputError(f"{name}: need y and x axes, got {axes!r}")
        self.kept = "".join(kept)
        sizes = dict(zip(axes, shape))
        self.shape = (sizes["y"], sizes["x"]) + ((sizes["c"],) if "c" in kept else ())
        self.dtype = np.dtype(array.dtype)
        image_layout(self.shape)  # (H, W), (H, W, 1|3|4)

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        index = list(self.index)
        positions = [i for i, s in enumerate(self.index) if isinstance(s, slice)]
        for axis, pos in zip(self.kept, positions):
            if axis == "y":
                index[pos] = slice(r0, r1)
            elif axis == "x":
                index[pos] = slice(c0, c1)
        data = np.asarray(self.array[tuple(index)])
        order = [self.kept.index(a) for a in "yxc" if a in self.kept]
        return np.ascontiguousarray(np.transpose(data, order))


def open_source(path: str | Path) -> Source:
    """Open a Zarr array, an OME-Zarr image (its full-resolution level), a TIFF or a ``.npy`` lazily.

    Raises
    ------
    InputError
        Not found, not readable, or not one 2D image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        if is_zarr(path):
            import zarr

            node = zarr.open(str(path), mode="r")
            axes = None
            if isinstance(node, zarr.Group):
                attrs = node.attrs.asdict()
                multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
                if not multiscales:
                    raise InputError(f"{path}: a Zarr group without OME-Zarr multiscales metadata; give an array")
                image = multiscales[0]
                node = node[image["datasets"][0]["path"]]
                axes = "".join(a["name"] if isinstance(a, dict) else str(a) for a in image.get("axes", [])) or None
            return Source(node, axes, str(path))
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile
            import zarr

            with tifffile.TiffFile(path) as tif:
                axes = tif.series[0].axes
            node = zarr.open(tifffile.imread(path, aszarr=True, series=0, level=0), mode="r")
            if isinstance(node, zarr.Group):
                node = node["0"]
            return Source(node, axes, str(path))
        if path.suffix.lower() == ".npy":
            return Source(np.load(path, mmap_mode="r", allow_pickle=False), None, str(path))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - zarr/tifffile raise many types for broken files
        raise InputError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    raise InputError(f"{path}: block tasks read Zarr, OME-Zarr, TIFF and .npy; convert it to one of those")


def is_huge(path: Path, huge_pixels: int) -> bool:
    """Whether ``path`` goes to block tasks: any Zarr store, or a 2D TIFF/.npy with more LR pixels."""
    path = Path(path)
    if is_zarr(path):
        return True
    if path.suffix.lower() not in TIFF_SUFFIXES + (".npy",):
        return False
    try:
        if path.suffix.lower() == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            ok = len(shape) == 2 or len(shape) == 3 and shape[-1] in (1, 3, 4)
        else:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, axes = series.shape, series.axes
            ok = axes in ("YX", "YXS", "SYX")
            shape = tuple(s for s, a in zip(shape, axes) if a in "YX")
        return bool(ok) and int(shape[0]) * int(shape[1]) > huge_pixels
    except Exception:  # noqa: BLE001 - unreadable: the single-image path reports it
        return False


# --------------------------------------------------------------------------------------------- worker


def scan_band(path: str, r0: int, r1: int) -> tuple[float, float]:
    """Min and max of rows ``r0:r1`` of the channels the model reads (as :func:`imaging.to_model_input`)."""
    src = open_source(path)
    band = model_channels(src.read(r0, r1, 0, src.shape[1]))
    return scan_values(band)


def to_model_units(raw: np.ndarray, norm: Normalization) -> np.ndarray:
    """:func:`imaging.to_model_input` on a region with a given normalisation: the same float32 values."""
    return normalize_block(model_channels(raw), norm)


_ENGINES: dict = {}


def _engine(weights):
    """The worker's engine for ``weights`` (prepared once per process and weights)."""
    from ..models.mc import Engine

    key = (weights.model, weights.sha256, weights.source)
    if key not in _ENGINES:
        _ENGINES.clear()
        _ENGINES[key] = Engine(weights.spec, weights.arrays)
    return _ENGINES[key]


def predict_region(engine, read, lr_shape, r0, c0, rows, cols, norm: Normalization, options: SROptions):
    """The engine's outputs for LR rows ``r0:r0+rows``, cols ``c0:c0+cols`` (``r0``, ``c0`` multiples of
    the model's block) of an image of ``lr_shape``, in the layout :func:`pipeline.iter_super_resolve` gives
    (model units): the engine's own blocks at their global positions (:func:`.mc.iter_blocks`), so equal to
    the whole-image run bit for bit. The dihedral-view methods ("tta", "mc-tta") run each view's blocks that
    cover the region at their global positions in that view, and pool them as the whole-image run does
    (:class:`.tta.ViewPool`), so they are equal bit for bit too.

    ``read(y0, y1, x0, x1)`` returns the input's raw pixels of a region. Returns ``(mean, std, heatmap)``.
    """
    from ..models.mc import MCResult, allocate_result

    spec = options.spec
    s = spec.scale
    grayscale = norm.grayscale or spec.colour == "gray"
    out_shape = (s * rows, s * cols) + (() if grayscale else (3,))
    mean, single, std = (np.zeros(out_shape, np.float32) for _ in range(3))
    heatmap = std if grayscale else np.zeros(out_shape[:2], np.float32)
    out = MCResult(
        mean=_LayoutWriter(mean, grayscale),
        single=_LayoutWriter(single, grayscale),
        std=_LayoutWriter(std, grayscale, heatmap=None if grayscale else heatmap, is_std=True),
        n_samples=options.effective_samples,
        seed=options.seed,
    )
    method = options.uncertainty_method
    if method not in ("tta", "mc-tta"):
        _predict_blocks(engine, read, lr_shape, (r0, c0, rows, cols), norm, options, options.seed, out)
        return mean, std, heatmap
    from ..models.tta import (
        INVERSE_VIEW,
        ViewPool,
        dihedral,
        dihedral_inverse,
        view_box,
        view_samples,
        view_seed,
        view_shape,
    )

    samples = [0] * 8 if method == "tta" else view_samples(options.n_samples)
    seed = 0 if method == "tta" else options.seed  # as pipeline's iter_tta_predict / iter_mc_tta_predict
    pool = ViewPool((s * rows, s * cols, spec.channels), samples)
    block = spec.block
    for t in pool.views:
        shape_t = view_shape(lr_shape, t)
        b0, b1, b2, b3 = view_box((r0, r0 + rows, c0, c0 + cols), lr_shape, t)
        # the region in view t's frame, widened to that view's block grid (its blocks as the whole view runs them)
        g0, g2 = b0 // block * block, b2 // block * block
        g1, g3 = min(-(-b1 // block) * block, shape_t[0]), min(-(-b3 // block) * block, shape_t[1])

        def read_view(y0, y1, x0, x1, t=t, shape_t=shape_t):
            a0, a1, a2, a3 = view_box((y0, y1, x0, x1), shape_t, INVERSE_VIEW[t])
            return dihedral(read(a0, a1, a2, a3), t)

        one = allocate_result((g1 - g0, g3 - g2), samples[t], 0, scale=s, channels=spec.channels)
        _predict_blocks(
            engine, read_view, shape_t, (g0, g2, g1 - g0, g3 - g2), norm, options, view_seed(seed, t), one, samples[t]
        )
        crop = np.s_[s * (b0 - g0) : s * (b1 - g0), s * (b2 - g2) : s * (b3 - g2)]
        pool.add(t, dihedral_inverse(one.mean[crop], t), dihedral_inverse(one.std[crop], t))
    pool.write(out)
    return mean, std, heatmap


def _predict_blocks(engine, read, lr_shape, region, norm, options, seed, out, n_samples=None) -> None:
    """Run the engine on ``region`` (``r0, c0, rows, cols``, block-aligned) of an image of ``lr_shape`` read by
    ``read``, with the model's halo of context (zeros outside the image), into ``out``."""
    from ..core.colour import network_input
    from ..core.progress import run_to_end

    spec = options.spec
    halo = spec.halo
    r0, c0, rows, cols = region
    h, w = lr_shape
    y0, y1 = max(r0 - halo, 0), min(r0 + rows + halo, h)
    x0, x1 = max(c0 - halo, 0), min(c0 + cols + halo, w)
    net = network_input(to_model_units(read(y0, y1, x0, x1), norm), spec.colour, norm.grayscale)
    context = np.zeros((rows + 2 * halo, cols + 2 * halo, net.shape[2]), np.float32)  # zero outside the image
    context[y0 - (r0 - halo) : y1 - (r0 - halo), x0 - (c0 - halo) : x1 - (c0 - halo)] = net
    del net
    steps = engine.iter_predict(
        context,
        n_samples=options.effective_samples if n_samples is None else n_samples,
        seed=seed,
        chunk=options.chunk or DEFAULT_CHUNK,
        out=out,
        origin=(r0, c0),
        image_shape=(h, w),
    )
    run_to_end(steps)


def predict_tile(
    path: str,
    staging: str,
    r0: int,
    c0: int,
    tile: int,
    norm: dict,
    options: SROptions,
    weights,
    names: tuple[str, ...],
) -> dict:
    """One block task: compute a tile and write its chunk of each output's level 0; returns statistics."""
    import zarr

    from .tasks import peak_rss_mib, worker_name

    start = time.perf_counter()
    norm = Normalization(**{**norm, "notes": tuple(norm["notes"])})
    src = open_source(path)
    h, w = src.shape[:2]
    rows, cols = min(tile, h - r0), min(tile, w - c0)
    engine = _engine(weights)
    mean, std, heatmap = predict_region(engine, src.read, (h, w), r0, c0, rows, cols, norm, options)
    s = options.spec.scale
    outputs = {"mean": (mean, norm.to_input_units), "std": (std, norm.std_to_input_units)}
    if "sigma" in names:
        factor = np.float32(weights.calibration_scale_for(options.uncertainty_method))
        outputs["sigma"] = (std, lambda x: norm.std_to_input_units(x) * factor)
    if not Path(staging).is_dir():  # the batch was cancelled and its staging folder removed
        raise InputError(f"{staging} is gone: the batch was cancelled")
    for name in names:
        array, convert = outputs[name]
        values = convert(array)
        target = zarr.open_array(str(Path(staging) / f"{name}.ome.zarr" / "0"), mode="r+")
        if values.ndim == 3:
            target[:, s * r0 : s * r0 + values.shape[0], s * c0 : s * c0 + values.shape[1]] = np.moveaxis(values, -1, 0)
        else:
            target[s * r0 : s * r0 + values.shape[0], s * c0 : s * c0 + values.shape[1]] = values
    bins = np.minimum((heatmap.ravel() * (HIST_BINS / HIST_MAX)).astype(np.int64), HIST_BINS - 1)
    return {
        "sum": float(heatmap.sum(dtype=np.float64)),
        "count": int(heatmap.size),
        "max": float(heatmap.max()),
        "hist": np.bincount(np.maximum(bins, 0), minlength=HIST_BINS),
        "seconds": time.perf_counter() - start,
        "worker": worker_name(),
        "peak_rss_mib": peak_rss_mib(),
    }


def downsample_chunk(image: str, level: int, i: int, j: int, chunk: int) -> None:
    """Chunk ``(i, j)`` of pyramid ``level``: 2x2 means of ``level - 1`` (edge pixels repeated on odd sides)."""
    import zarr

    src = zarr.open_array(str(Path(image) / str(level - 1)), mode="r")
    dst = zarr.open_array(str(Path(image) / str(level)), mode="r+")
    ny, nx = dst.shape[-2:]
    y0, y1 = i * chunk, min((i + 1) * chunk, ny)
    x0, x1 = j * chunk, min((j + 1) * chunk, nx)
    block = np.asarray(src[..., 2 * y0 : 2 * y1, 2 * x0 : 2 * x1], np.float64)
    pad = [(0, 0)] * (block.ndim - 2) + [(0, 2 * (y1 - y0) - block.shape[-2]), (0, 2 * (x1 - x0) - block.shape[-1])]
    block = np.pad(block, pad, mode="edge")
    shape = block.shape[:-2] + (y1 - y0, 2, x1 - x0, 2)
    dst[..., y0:y1, x0:x1] = block.reshape(shape).mean(axis=(-3, -1)).astype(np.float32)


# --------------------------------------------------------------------------------------------- client


def pyramid_shapes(shape: tuple[int, int], chunk: int) -> list[tuple[int, int]]:
    """Level shapes, halving (rounding up) until the image fits in one chunk."""
    shapes = [tuple(shape)]
    while max(shapes[-1]) > chunk:
        shapes.append(tuple(math.ceil(n / 2) for n in shapes[-1]))
    return shapes


def create_image(
    folder: Path, name: str, shape: tuple[int, int], colour: bool, chunk: int, scale: int, units_note: str
) -> list[tuple[int, int]]:
    """An empty OME-NGFF 0.4 multiscale image ``folder/name.ome.zarr``; returns the level shapes."""
    import zarr

    group = zarr.open_group(str(folder / f"{name}.ome.zarr"), mode="w", zarr_format=2)
    levels = pyramid_shapes(shape, chunk)
    axes = ([{"name": "c", "type": "channel"}] if colour else []) + [
        {"name": "y", "type": "space"},
        {"name": "x", "type": "space"},
    ]
    datasets = []
    for k, level_shape in enumerate(levels):
        full = ((3,) if colour else ()) + tuple(level_shape)
        chunks = ((1,) if colour else ()) + (chunk, chunk)
        group.create_array(str(k), shape=full, chunks=chunks, dtype="float32", fill_value=0.0)
        # In input pixels: an output pixel of level k covers 2^k / scale of them; centres as in the layers.
        pixel = 2**k / scale
        offset = -(scale - 1) / (2 * scale) + (2**k - 1) / (2 * scale)
        datasets.append(
            {
                "path": str(k),
                "coordinateTransformations": [
                    {"type": "scale", "scale": ([1.0] if colour else []) + [pixel, pixel]},
                    {"type": "translation", "translation": ([0.0] if colour else []) + [offset, offset]},
                ],
            }
        )
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": name,
            "axes": axes,
            "datasets": datasets,
            "type": "mean of 2x2 pixels",
            "metadata": {"description": units_note},
        }
    ]
    return levels


def check_tile_memory(client, tile_shape: tuple[int, ...], options: SROptions) -> None:
    """Refuse, before any task runs, tiles whose block task would need more memory than a worker may use.

    A task holds its tile's outputs in RAM (then writes them to the Zarr stores), so its need is
    :func:`.core.pipeline.estimate_memory` of the tile without a scratch folder; the JAX runtime comes on
    top (a worker's measured peak is in ``summary.json``). A worker's nanny kills it at the fraction
    ``distributed.worker.memory.terminate`` of its limit (dask's default 0.95; read from this process's dask
    config, which a local cluster's workers share), so without this check every task would fail only after
    computing.
    """
    import dask

    from .cluster import worker_memory_limit

    limit = worker_memory_limit(client)
    if limit is None:  # no worker has a limit: nothing to refuse
        return
    terminate = dask.config.get("distributed.worker.memory.terminate", None)
    usable = int(limit * terminate) if terminate else limit  # False: the nanny never kills
    need = estimate_memory(tile_shape, replace(options, scratch_dir=None))
    if need > usable:
        raise InputError(
            f"a block task on a {tile_shape[0]}x{tile_shape[1]} tile needs about {format_size(need)} of memory "
            f"but a worker may use {format_size(usable)} (its memory limit {format_size(limit)}"
            + (f" x the nanny's terminate fraction {terminate:g}" if terminate else "")
            + "); use a smaller tile (--tile)"
        )


def process_huge(
    client,
    item: BatchInput,
    outdir: Path,
    options: SROptions,
    weights,
    *,
    tile: int,
    progress: bool = True,
    stream=None,
    weights_ref=None,
) -> dict:
    """Run one huge input as block tasks on ``client`` and write ``outdir/<name>/``; returns its summary row.

    ``weights_ref``: the weights as a dask future (sent to the workers once), else ``weights`` itself."""
    from distributed import as_completed

    from ..core.report import staged_folder
    from . import _lost, _scheduler_gone
    from .progress import Bar
    from .summary import file_checksums
    from .tasks import base_row, one_line

    start = time.perf_counter()
    row = base_row(item.path, item.name, options, weights)
    row["kind"] = "zarr"
    path = str(item.path)
    futures = []
    try:
        src = open_source(path)
        h, w, channels = image_layout(src.shape)
        row["shape"] = "x".join(map(str, src.shape))
        spec = options.spec
        if spec.colour == "y" and channels != 1:
            raise InputError(
                f"{path}: block tasks do not support colour images with the luma model {spec.id} "
                "(its chroma is upscaled over the whole image); convert to grayscale or use an rgb model"
            )
        check_tile_memory(client, (min(tile, h), min(tile, w)) + src.shape[2:], options)
        bands = [(r, min(r + tile, h)) for r in range(0, h, tile)]
        futures = client.map(scan_band, [path] * len(bands), *zip(*bands), pure=False)
        ranges = client.gather(futures)
        notes = ("alpha channel dropped",) if channels == 4 else ()
        norm = choose_normalization(
            src.dtype, (min(r[0] for r in ranges), max(r[1] for r in ranges)), channels == 1, notes
        )
        n_samples = options.effective_samples
        method = options.uncertainty_method
        std_scale = weights.calibration_scale_for(method)
        calibrated = std_scale is not None and n_samples > 0
        names = ("mean", "std") + (("sigma",) if calibrated else ())
        colour = not (norm.grayscale or spec.colour == "gray")
        s = spec.scale
        chunk = s * tile
        tiles = [(r, c) for r in range(0, h, tile) for c in range(0, w, tile)]
        stats = {
            "sum": 0.0,
            "count": 0,
            "max": 0.0,
            "hist": np.zeros(HIST_BINS, np.int64),
            "peak_rss_mib": 0.0,
            "workers": set(),
        }
        with staged_folder(outdir / item.name) as staging:
            levels = {}
            for name in names:
                note = f"{name}, float32, in the input's units" + {
                    "std": f" ({std_kind(method)})",
                    "sigma": " (std_scale x std)",
                }.get(name, "")
                levels[name] = create_image(staging, name, (s * h, s * w), colour, chunk, s, note)
            norm_dict = norm.as_dict()
            ref = weights if weights_ref is None else weights_ref
            futures = [
                client.submit(predict_tile, path, str(staging), r, c, tile, norm_dict, options, ref, names, pure=False)
                for r, c in tiles
            ]
            bar = Bar(len(tiles), unit=f"blocks of {item.name}", stream=stream, enabled=progress)
            for k, future in enumerate(as_completed(futures)):
                part = future.result()
                stats["sum"] += part["sum"]
                stats["count"] += part["count"]
                stats["max"] = max(stats["max"], part["max"])
                stats["hist"] += part["hist"]
                stats["peak_rss_mib"] = max(stats["peak_rss_mib"], part["peak_rss_mib"])
                stats["workers"].add(part["worker"])
                bar.update(done=k + 1)
            bar.close()
            for name in names:
                for level in range(1, len(levels[name])):
                    ny, nx = levels[name][level]
                    futures = [
                        client.submit(
                            downsample_chunk, str(staging / f"{name}.ome.zarr"), level, i, j, chunk, pure=False
                        )
                        for i in range(math.ceil(ny / chunk))
                        for j in range(math.ceil(nx / chunk))
                    ]
                    client.gather(futures)
            mean_u = stats["sum"] / stats["count"]
            p99 = _hist_percentile(stats["hist"], stats["count"], 99.0)
            summary = {
                "package": "napari-sr-uncertainty",
                "version": _version(),
                "model": spec.id,
                "scale": s,
                "colour_mode": spec.colour,
                "seed": options.seed,
                "samples": n_samples,
                "weights": weights.source,
                "weights_sha256": weights.sha256,
                "input": path,
                "input_shape": list(src.shape),
                "layout": "huge image, block tasks",
                "output_shape": [s * h, s * w] + ([3] if colour else []),
                "outputs": {name: f"{name}.ome.zarr" for name in names},
                "output_axes": "CYX" if colour else "YX",
                "tile_lr": tile,
                "tiles": len(tiles),
                "pyramid_levels": len(levels["mean"]),
                "normalization": norm.as_dict(),
                "uncertainty_method": method,
                "calibration": {"std_scale": std_scale} if calibrated else None,
                "uncertainty_model_units": {
                    "mean": mean_u,
                    "max": stats["max"],
                    "p99": p99,
                    "p99_note": f"from a {HIST_BINS}-bin histogram over [0, {HIST_MAX}] (resolution "
                    f"{HIST_MAX / HIST_BINS:.2g}); the bin's upper edge",
                },
                "peak_worker_rss_mib": round(stats["peak_rss_mib"], 1),
                "workers": sorted(stats["workers"]),
                "timings_s": {"total": time.perf_counter() - start},
                "versions": library_versions(),
            }
            (staging / "summary.json").write_text(json.dumps(summary, indent=2))
        row.update(
            uncertainty_mean=mean_u,
            uncertainty_p99=p99,
            sigma_mean=std_scale * mean_u if calibrated else None,
            worker=" ".join(sorted(stats["workers"])),
            peak_rss_mib=round(stats["peak_rss_mib"], 1),
            sha256=file_checksums(outdir / item.name),
            status="done",
            error="",
        )
    except KeyboardInterrupt:
        client.cancel(futures)
        raise
    except Exception as exc:  # noqa: BLE001 - one input's failure is recorded; the batch goes on
        if _scheduler_gone(client):
            raise _lost(client) from None
        client.cancel(futures)
        row.update(status="failed", error=one_line(exc))
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def _hist_percentile(hist: np.ndarray, count: int, q: float) -> float:
    rank = math.ceil(q / 100 * count)
    k = int(np.searchsorted(np.cumsum(hist), max(rank, 1)))
    return (k + 1) * HIST_MAX / HIST_BINS


def _version() -> str:
    from .. import __version__

    return __version__
