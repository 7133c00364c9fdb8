"""Progress reports of the long-running generators, and the one loop that drives a generator to its end."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    message: str


def run_to_end(gen: Generator, progress: Callable[[object], None] | None = None):
    """Run a generator to completion (the ``iter_*`` functions), passing each step to ``progress``.

    Returns the generator's result; the generator is closed if ``progress`` raises (e.g. Ctrl-C).
    """
    steps = map_progress(gen, progress or (lambda step: None))
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def map_progress(gen: Generator, transform: Callable[[object], object]) -> Generator:
    """Yield ``transform(step)`` for each step of ``gen`` and return its result (``yield from`` this).

    ``gen`` is closed when the consumer closes this generator early (cancel).
    """
    try:
        while True:
            try:
                step = next(gen)
            except StopIteration as stop:
                return stop.value
            yield transform(step)
    finally:
        gen.close()
