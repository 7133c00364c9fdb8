"""The README's screenshots, made by running the plugin in napari with its defaults (issue 17).

    xvfb-run -a -s "-screen 0 1600x1000x24" python bench/screenshots.py          # writes .github/*.png
    python bench/screenshots.py --out /tmp/shots --samples 8                       # quicker, elsewhere

Writes, each under 600 kB (colours reduced to a 256-colour palette when needed):

* ``screenshot_cell.png``: the bundled Cell sample (0.214 µm pixels) after a run with the widget's
  defaults (esrcnn-x2, 40 samples, 64-px patches, 5 marks each): the viewer with the widget docked.
* ``screenshot_fluorescence.png``: a synthetic 16-bit fluorescence-like image (256x256, 0.2 µm pixels;
  dim Poisson background, blurred filaments and spots), the same way.
* ``overlay_choices.png``: the Cell result's canvas four ways, the choices weighed for the default:
  additive magma at 0.7 (the old default), translucent magma at 0.5, the default (magma fading to
  transparent where certain, translucent, 0.8), and the heatmap hidden (marks over the mean).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 600_000


def fluorescence_image(size: int = 256, seed: int = 0) -> np.ndarray:
    """A 16-bit fluorescence-like image: dim background with Poisson noise, blurred filaments and spots."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    signal = np.zeros((size, size))
    for _ in range(12):  # filaments: random smooth curves
        t = np.linspace(0, 1, 400)
        y0, x0 = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * np.pi)
        bend = rng.uniform(-2, 2)
        length = rng.uniform(0.3, 0.9) * size
        ys = y0 + length * t * np.sin(angle + bend * t)
        xs = x0 + length * t * np.cos(angle + bend * t)
        keep = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
        np.add.at(signal, (ys[keep].astype(int), xs[keep].astype(int)), rng.uniform(0.6, 1.0))
    for _ in range(25):  # spots
        y, x = rng.integers(0, size, 2)
        signal[y, x] += rng.uniform(3, 8)
    signal = ndimage.gaussian_filter(signal, 1.6)
    signal = signal / signal.max() * 3000
    counts = rng.poisson(signal + 120.0) + rng.normal(0, 4, signal.shape)
    return np.clip(counts, 0, 65535).astype(np.uint16)


def save_png(array: np.ndarray, path: Path) -> None:
    """Save an RGB(A) screenshot, as a 256-colour palette PNG when the full-colour one is too large."""
    from PIL import Image

    image = Image.fromarray(array[..., :3])
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    scale = 0.9
    while path.stat().st_size > MAX_BYTES and scale > 0.3:
        small = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.LANCZOS)
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        scale -= 0.1
    print(f"wrote {path} ({path.stat().st_size / 1000:.0f} kB)")


def settle(app, seconds: float = 0.5) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def run_widget(app, widget, timeout_s: float = 900.0) -> None:
    widget.run()
    start = time.perf_counter()
    while widget.is_running:
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError("the run did not finish")
        app.processEvents()
        time.sleep(0.01)
    settle(app, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".github", help="folder for the PNGs (default .github)")
    parser.add_argument("--samples", type=int, default=None, help="MC samples (default: the widget's, 40)")
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sr_uncertainty.plugin.layers import uncertainty_colormap
    from napari_sr_uncertainty.plugin.widget import SuperResolveWidget

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(args.width, args.height)
    widget = SuperResolveWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Super-resolve with uncertainty (napari-sr-uncertainty)")
    app = QApplication.instance()
    if args.samples:
        widget.samples.value = args.samples

    # 1. the Cell sample with the defaults
    (cell,) = viewer.open_sample("napari-sr-uncertainty", "cell")
    widget.image_layer.value = cell
    run_widget(app, widget)
    viewer.layers.selection = {viewer.layers["cell LR SR uncertainty"]}
    viewer.reset_view()
    settle(app)
    save_png(viewer.screenshot(canvas_only=False, flash=False), args.out / "screenshot_cell.png")

    # 2. the overlay choices, on the Cell result's canvas
    heatmap = viewer.layers["cell LR SR uncertainty"]
    panels = []
    choices = [
        ("additive, magma, 0.7 (old)", "additive", "magma", 0.7, True),
        ("translucent, magma, 0.5", "translucent", "magma", 0.5, True),
        ("default: fades where certain, 0.8", "translucent", uncertainty_colormap("magma"), 0.8, True),
        ("heatmap hidden: marks over the mean", "translucent", uncertainty_colormap("magma"), 0.8, False),
    ]
    for title, blending, colormap, opacity, visible in choices:
        heatmap.blending, heatmap.colormap, heatmap.opacity, heatmap.visible = blending, colormap, opacity, visible
        settle(app, 0.3)
        shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3]
        panels.append((title, shot))
    save_png(_grid(panels), args.out / "overlay_choices.png")
    heatmap.blending, heatmap.colormap, heatmap.opacity, heatmap.visible = choices[2][1:]

    # 3. a 16-bit fluorescence-like image at 0.2 µm pixels
    for layer in list(viewer.layers):
        layer.visible = False
    fluo = viewer.add_image(fluorescence_image(), name="fluorescence", scale=(0.2, 0.2), units="um", colormap="gray")
    widget.image_layer.value = fluo
    run_widget(app, widget)
    viewer.reset_view()
    settle(app)
    save_png(viewer.screenshot(canvas_only=False, flash=False), args.out / "screenshot_fluorescence.png")
    print(f"status after the fluorescence run: {widget.status.value}")
    viewer.close()
    return 0


def _grid(panels: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Panels side by side, 2 per row, each titled."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = panels[0][1].shape[:2]
    scale = min(1.0, 700 / w)
    pw, ph = int(w * scale), int(h * scale)
    sheet = Image.new("RGB", (2 * pw, ((len(panels) + 1) // 2) * (ph + 30)), "black")
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=20)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for i, (title, shot) in enumerate(panels):
        x, y = (i % 2) * pw, (i // 2) * (ph + 30)
        sheet.paste(Image.fromarray(shot).resize((pw, ph), Image.Resampling.LANCZOS), (x, y + 30))
        draw.text((x + 8, y + 4), title, fill="white", font=font)
    return np.asarray(sheet)


if __name__ == "__main__":
    sys.exit(main())
