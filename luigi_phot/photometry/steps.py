"""A stage as an ordered list of small named steps over one state object.

Each of the stages (the catalogue, the per-frame measurement, the light curve) is a
tuple of :class:`Step` run by :func:`run_steps`: every step is timed, and an unexpected
error carries a note naming the step and what the stage was working on, so that a
failure deep in numpy says where it came from.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

__all__ = ["Step", "run_steps"]


class Step(NamedTuple):
    name: str                                  # also the key of the step's time
    run: Callable[[Any], str | None]           # returns a progress message, or None
    progress: float | None = None              # the fraction of the stage done after it
    when: Callable[[Any], bool] | None = None  # run only when this holds


def run_steps(steps: tuple[Step, ...], state, subject: str, expected: tuple[type[BaseException], ...] = (),
              progress: Callable[[float, str], None] | None = None) -> dict[str, float]:
    """Run `steps` in order over `state`; return each step's time in seconds. An error of
    one of the `expected` kinds (a refusal the stage means to make) passes as it is; any
    other gets a note "in step <name> of <subject>". `progress(fraction, message)` is
    called after a step that has a fraction and returns a message."""
    timings: dict[str, float] = {}
    for step in steps:
        if step.when is not None and not step.when(state):
            continue
        t0 = time.perf_counter()
        try:
            message = step.run(state)
        except expected:
            raise
        except Exception as exc:
            exc.add_note(f"in step {step.name!r} of {subject}")
            raise
        timings[step.name] = round(time.perf_counter() - t0, 4)
        if message and progress is not None and step.progress is not None:
            progress(step.progress, message)
    return timings
