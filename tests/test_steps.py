"""steps.py: the runner every stage goes through (measure, catalogue, light curve)."""

from __future__ import annotations

import pytest

from luigi_phot.photometry.catalogue import CATALOGUE_STEPS
from luigi_phot.photometry.lightcurve import LIGHTCURVE_STEPS
from luigi_phot.photometry.measure import MEASURE_STEPS
from luigi_phot.photometry.steps import Step, run_steps


class Refused(Exception):
    pass


def _steps(fail_with=None):
    def first(state):
        state.append("first")
        return "first done"

    def second(state):
        if fail_with is not None:
            raise fail_with
        state.append("second")

    return (Step("first", first, 0.5), Step("skipped", lambda s: s.append("never"), when=lambda s: False),
            Step("second", second, 1.0))


def test_steps_run_in_order_timed_and_skipped_when_their_condition_fails():
    state, seen = [], []
    timings = run_steps(_steps(), state, "frame-1.fits", progress=lambda f, m: seen.append((f, m)))
    assert state == ["first", "second"]
    assert list(timings) == ["first", "second"] and all(t >= 0 for t in timings.values())
    assert seen == [(0.5, "first done")]        # the second step returned no message


def test_an_unexpected_error_names_the_step_and_the_subject_and_a_refusal_passes_as_it_is():
    with pytest.raises(ZeroDivisionError) as info:
        run_steps(_steps(ZeroDivisionError("division by zero")), [], "measuring frame-1.fits", expected=(Refused,))
    assert "in step 'second' of measuring frame-1.fits" in info.value.__notes__
    with pytest.raises(Refused) as info:
        run_steps(_steps(Refused("too few stars")), [], "measuring frame-1.fits", expected=(Refused,))
    assert not getattr(info.value, "__notes__", None)


def test_every_stage_is_a_list_of_uniquely_named_steps():
    for steps in (MEASURE_STEPS, CATALOGUE_STEPS, LIGHTCURVE_STEPS):
        names = [s.name for s in steps]
        assert len(names) == len(set(names)) >= 6
        assert all(isinstance(s, Step) and callable(s.run) for s in steps)
