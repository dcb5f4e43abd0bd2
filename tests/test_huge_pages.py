"""The one use of a numpy internal (luigi_phot/tasks/base.py, without_huge_pages):
``_set_madvise_hugepage`` exists, returns the previous setting, and the decorator
switches huge pages off while the stage method runs and back afterwards, also when
it raises. A numpy that drops the function fails here, not silently slower."""

from __future__ import annotations

import pytest

from luigi_phot.tasks.base import huge_pages_switch, without_huge_pages


class _Stage:
    def __init__(self):
        self.seen = None

    @without_huge_pages
    def build(self, fail=False):
        switch = huge_pages_switch()
        self.seen = switch(False)      # the setting while the method runs
        if fail:
            raise ValueError("stage failed")
        return "built"


def test_numpy_offers_the_switch_and_it_returns_the_previous_setting():
    switch = huge_pages_switch()
    assert switch is not None
    before = switch(True)
    try:
        assert switch(False) is True
        assert switch(True) is False
    finally:
        switch(before)


@pytest.mark.parametrize("fail", [False, True])
def test_huge_pages_are_off_while_the_method_runs_and_restored_after(fail):
    switch = huge_pages_switch()
    before = switch(True)
    stage = _Stage()
    try:
        if fail:
            with pytest.raises(ValueError, match="stage failed"):
                stage.build(fail=True)
        else:
            assert stage.build() == "built"
        assert stage.seen is False
        assert switch(True) is True           # restored to on
    finally:
        switch(before)
