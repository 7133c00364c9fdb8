"""The GUI's longest freeze during a run: event-loop gaps from pressing Run to the last layer (issue 17).

    python bench/gui_gap.py                   # 512x512 RGB, 8 samples: first run, re-run, re-run
    python bench/gui_gap.py --samples 40 --size 512 --runs 3 --limit-ms 200
    xvfb-run -a python bench/gui_gap.py       # without a screen
    python bench/gui_gap.py --step-times      # and what the end of each run is made of

A 10 ms QTimer ticks on the GUI thread while the widget runs; a gap between two ticks is time the event
loop could not run (a frozen GUI). Reported per run: the longest gap while blocks are computed (the worker
runs, the GUI only shows progress) and the longest gap of the end of the run (from the worker's result to
the last layer: adding or, on a re-run, updating the five layers and the colorbar), with the step that
caused it. Each gap is also given as the GUI thread's own CPU time in it (``time.thread_time``): on a
shared, loaded machine the wall-clock gap is that work stretched by the other processes, and the CPU time
is what the plugin and napari did. The first run also pays for JAX's import and compilation in the worker (not on the GUI thread)
and for napari's first Shapes and colorbar visuals. Exit status 1 when any gap exceeds ``--limit-ms``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def record_step_times(viewer, widget, log: list) -> None:
    """Append ``(what, wall ms, GUI-thread CPU ms)`` to ``log`` for each of the widget's layer steps and each
    canvas draw: what one event-loop turn of the end of a run is made of."""
    run_step = widget._next_step

    def timed_step() -> None:
        start, cpu = time.perf_counter(), time.thread_time()
        run_step()
        log.append(("layer step", 1e3 * (time.perf_counter() - start), 1e3 * (time.thread_time() - cpu)))

    widget._next_step = timed_step
    canvas = viewer.window._qt_viewer.canvas._scene_canvas  # napari's private canvas: a bench, not the product
    began = {}

    def draw_began(_event) -> None:
        began["at"] = (time.perf_counter(), time.thread_time())

    def draw_ended(_event) -> None:
        start, cpu = began.pop("at", (time.perf_counter(), time.thread_time()))
        log.append(("canvas draw", 1e3 * (time.perf_counter() - start), 1e3 * (time.thread_time() - cpu)))

    canvas.events.draw.connect(draw_began, position="first")
    canvas.events.draw.connect(draw_ended, position="last")


def measure_run(qt_app, viewer, widget, timeout_s: float = 600.0) -> dict:
    """Run the widget once and return its event-loop gaps (ms): during blocks, at the end, overall."""
    from qtpy.QtCore import QTimer

    phase = {"now": "start"}
    ticks: list[tuple[float, str]] = []
    cpu: list[float] = []
    timer = QTimer()
    timer.setInterval(10)

    def tick() -> None:
        ticks.append((time.perf_counter(), phase["now"]))
        cpu.append(time.thread_time())

    timer.timeout.connect(tick)
    timer.start()
    t_run, cpu_run = time.perf_counter(), time.thread_time()
    widget.run()
    worker = widget.worker

    def on_progress(step):
        prog = step[1]
        phase["now"] = "blocks" if prog.message.startswith("block") and prog.done < prog.total else prog.message

    worker.yielded.connect(on_progress)
    worker.returned.connect(lambda *_: phase.update(now="end"))
    while widget.is_running:
        if time.perf_counter() - t_run > timeout_s:
            raise TimeoutError("the run did not finish")
        qt_app.processEvents()
        time.sleep(0.002)
    t_last_layer, cpu_last_layer = time.perf_counter(), time.thread_time()
    for _ in range(30):  # the draws that follow the last layer
        qt_app.processEvents()
        time.sleep(0.01)
    timer.stop()
    times = np.array([t for t, _ in ticks] + [t_last_layer])
    phases = [p for _, p in ticks] + ["end"]
    gaps = np.diff(np.concatenate([[t_run], times]))
    cpu_gaps = np.diff(np.concatenate([[cpu_run], cpu, [cpu_last_layer]]))
    labels = ["start"] + phases[:-1]  # a gap belongs to the phase its starting tick was in
    by_phase: dict[str, float] = {}
    for gap, label in zip(gaps, labels):
        by_phase[label] = max(by_phase.get(label, 0.0), float(gap) * 1000)
    longest = int(np.argmax(gaps))
    return {
        "total_s": t_last_layer - t_run,
        "max_ms": float(gaps.max()) * 1000,
        "max_cpu_ms": float(cpu_gaps.max()) * 1000,
        "cpu_of_longest_ms": float(cpu_gaps[longest]) * 1000,
        "blocks_ms": by_phase.get("blocks", 0.0),
        "end_ms": by_phase.get("end", 0.0),
        "start_ms": by_phase.get("start", 0.0),
        "ticks": len(ticks),
        "longest_in": labels[longest],
    }


def _load() -> float:
    import os

    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="side of the random RGB input (default 512)")
    parser.add_argument("--samples", type=int, default=8, help="MC samples (default 8)")
    parser.add_argument("--runs", type=int, default=3, help="runs on the same input: the first and re-runs")
    parser.add_argument("--limit-ms", type=float, default=200.0, help="longest acceptable gap (default 200)")
    parser.add_argument(
        "--step-times", action="store_true", help="also list the layer steps and canvas draws over 20 ms of CPU"
    )
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sr_uncertainty.plugin.widget import SuperResolveWidget

    viewer = napari.Viewer(show=True)
    widget = SuperResolveWidget(viewer)
    viewer.window.add_dock_widget(widget)
    qt_app = QApplication.instance()
    image = np.random.default_rng(0).integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)
    layer = viewer.add_image(image, name="big", rgb=True)
    widget.samples.value = args.samples
    for _ in range(20):
        qt_app.processEvents()
        time.sleep(0.01)
    print(f"{args.size}x{args.size} RGB, {args.samples} samples, limit {args.limit_ms:.0f} ms per gap")
    print(
        f"{'run':<10} {'total s':>8} {'longest gap ms':>15} {'its CPU ms':>11} {'most CPU in a gap':>18} "
        f"{'computing blocks':>17} {'end of run':>11}  longest gap while"
    )
    worst = worst_cpu = 0.0
    step_log: list = []
    if args.step_times:
        record_step_times(viewer, widget, step_log)
    for run in range(args.runs):
        step_log.clear()
        widget.seed.value = run
        widget.image_layer.value = layer
        result = measure_run(qt_app, viewer, widget)
        name = "first" if run == 0 else f"re-run {run}"
        print(
            f"{name:<10} {result['total_s']:>8.1f} {result['max_ms']:>15.0f} {result['cpu_of_longest_ms']:>11.0f} "
            f"{result['max_cpu_ms']:>18.0f} {result['blocks_ms']:>17.0f} {result['end_ms']:>11.0f}  "
            f"{result['longest_in']}"
        )
        for what, wall_ms, cpu_ms in step_log:
            if cpu_ms > 20:
                print(f"    {what}: {wall_ms:.0f} ms ({cpu_ms:.0f} ms CPU)")
        worst = max(worst, result["max_ms"])
        worst_cpu = max(worst_cpu, result["max_cpu_ms"])
    viewer.close()
    ok = worst < args.limit_ms
    print(
        f"longest gap {worst:.0f} ms: {'within' if ok else 'OVER'} the {args.limit_ms:.0f} ms limit "
        f"(most GUI-thread CPU in one gap: {worst_cpu:.0f} ms; load average {_load():.1f})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
