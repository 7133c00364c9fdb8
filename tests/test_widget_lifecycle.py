"""The dock widget when its viewer goes away mid-run, and with lazy (dask) image layers (issue 7)."""

from __future__ import annotations

import time

import dask
import dask.array as da
import napari
import numpy as np
import pytest

from napari_sr_uncertainty.plugin.layers import OUTPUTS, POINT_OUTPUTS

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 120_000
# after the viewer goes, the worker stops at the next block boundary (~0.1-0.3 s per 64x64 block, 40 samples)
QUIT_TIMEOUT_MS = 10_000


def run_and_wait(qtbot, widget):
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=RUN_TIMEOUT_MS)


def start_and_wait_for_blocks(qtbot, widget):
    """Start a run and return its worker and signal log once block computation is under way."""
    widget.run()
    worker = widget.worker
    log: list[str] = []
    worker.yielded.connect(lambda step: log.append(step[1].message))
    for name in ("returned", "errored", "aborted", "finished"):
        getattr(worker, name).connect(lambda *_, name=name: log.append(name))
    qtbot.waitUntil(lambda: any(m.startswith("block") for m in log), timeout=RUN_TIMEOUT_MS)
    assert "finished" not in log, "the run ended before the test could interrupt it: use a larger image"
    return worker, log


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["close viewer", "close viewer, another current", "remove dock widget"])
def test_viewer_or_widget_gone_mid_run_quits_the_worker(qtbot, make_widget, make_napari_viewer, errors, how):
    viewer, widget = make_widget(samples=40)
    if how == "close viewer, another current":
        # napari asks workers registered with the closing window (its current viewer's) to quit; this
        # one is registered with the other viewer's window, so only the widget itself can stop it
        other = make_napari_viewer()
        assert napari.current_viewer() is other
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8), name="big")
    inserted: list[str] = []
    viewer.layers.events.inserted.connect(lambda event: inserted.append(event.value.name))
    with qtbot.capture_exceptions() as exceptions:
        worker, log = start_and_wait_for_blocks(qtbot, widget)
        t0 = time.perf_counter()
        if how.startswith("close viewer"):
            viewer.close()
        else:
            viewer.window.remove_dock_widget(widget.native)
        qtbot.waitUntil(lambda: "finished" in log, timeout=QUIT_TIMEOUT_MS)
        quit_s = time.perf_counter() - t0
        qtbot.wait(200)  # let anything still queued for the GUI thread run
    print(f"{how}: worker stopped {quit_s:.2f} s later")
    assert [e[1] for e in exceptions] == []
    assert "aborted" in log and "returned" not in log and not worker.is_running
    assert inserted == [] and errors == []
    assert widget.worker is None and not widget.is_running
    if how == "remove dock widget":  # the viewer lives on, and the widget's controls are back to idle
        assert widget.run_button.enabled and not widget.cancel_button.enabled


def labelled_stack(n_planes, computed):
    """A lazy (Z, H, W) uint8 stack, one delayed task per plane, that records which planes get computed."""

    def plane(z):
        computed.append(z)
        return np.random.default_rng(z).integers(0, 255, (40, 48), dtype=np.uint8)

    planes = [da.from_delayed(dask.delayed(plane)(z), (40, 48), np.uint8) for z in range(n_planes)]
    return da.stack(planes), np.stack([plane(z) for z in range(n_planes)])


def same_outputs(viewer, name_a, name_b):
    """The two inputs' output layers hold exactly equal data (and patch scores)."""
    for output in OUTPUTS:
        a, b = viewer.layers[f"{name_a} {output}"], viewer.layers[f"{name_b} {output}"]
        if output in POINT_OUTPUTS:  # the marks: rectangles, one array per patch
            assert len(a.data) == len(b.data)
            for rect_a, rect_b in zip(a.data, b.data):
                np.testing.assert_array_equal(rect_a, rect_b)
        else:
            np.testing.assert_array_equal(a.data, b.data)
        if output in POINT_OUTPUTS:
            np.testing.assert_array_equal(a.features["uncertainty"], b.features["uncertainty"])


def test_dask_rgb_layer_gives_the_numpy_results(qtbot, make_widget, errors):
    viewer, widget = make_widget()
    image = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    lazy = viewer.add_image(da.from_array(image, chunks=(64, 64, 3)), name="lazy")
    assert lazy.rgb
    run_and_wait(qtbot, widget)
    viewer.add_image(image, name="eager")
    run_and_wait(qtbot, widget)
    assert errors == []
    same_outputs(viewer, "lazy", "eager")


def test_dask_stack_reads_only_the_current_slice(qtbot, make_widget, errors):
    viewer, widget = make_widget()
    computed: list[int] = []
    lazy, eager = labelled_stack(6, computed)
    viewer.add_image(lazy, name="lazy")
    viewer.dims.set_current_step(0, 4)
    computed.clear()  # napari itself reads the planes it draws
    job = widget.capture_job()
    assert computed == [], "capturing a lazy layer must not read it on the GUI thread"
    assert isinstance(job.images[0], da.Array)
    run_and_wait(qtbot, widget)
    # no other plane is read (plane 4 itself may come from napari's dask cache of what it drew)
    assert set(computed) <= {4}
    viewer.add_image(eager, name="eager")
    viewer.dims.set_current_step(0, 4)
    run_and_wait(qtbot, widget)
    assert errors == []
    same_outputs(viewer, "lazy", "eager")


def test_dask_stack_all_slices_gives_the_numpy_results(qtbot, make_widget, errors):
    viewer, widget = make_widget()
    computed: list[int] = []
    lazy, eager = labelled_stack(3, computed)
    viewer.add_image(lazy, name="lazy")
    widget.all_slices.value = True
    computed.clear()
    assert all(isinstance(image, da.Array) for image in widget.capture_job().images) and computed == []
    run_and_wait(qtbot, widget)
    viewer.add_image(eager, name="eager")
    run_and_wait(qtbot, widget)
    assert errors == [] and viewer.layers["lazy SR mean"].data.shape == (3, 80, 96)
    same_outputs(viewer, "lazy", "eager")
