"""How the stages that work on large arrays get their memory (luigi_phot/tasks/memory.py):
numpy's huge-page switch (a numpy internal, pinned here: a numpy that drops it fails
this file, not silently slower) and glibc's reuse of freed large blocks, both on while
a decorated method runs and restored after it, also when it raises."""

from __future__ import annotations

import resource

import numpy as np
import pytest

from luigi_phot.tasks.memory import _glibc, for_large_arrays, heap_reuse, huge_pages_switch

BLOCK = (1000, 5000)     # 40 MB of float64: above glibc's largest threshold for a fresh mmap (32 MiB)


def _faults_of_temporaries(n: int = 8) -> int:
    """Page faults taken by n large temporaries, each freed before the next."""
    base = np.ones(BLOCK)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        t = base * 2.0
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


class _Stage:
    def __init__(self):
        self.seen = None

    @for_large_arrays
    def build(self, fail=False):
        self.seen = (huge_pages_switch()(False), _faults_of_temporaries())
        if fail:
            raise ValueError("stage failed")
        return "built"


def test_numpy_offers_the_huge_page_switch_and_it_returns_the_previous_setting():
    switch = huge_pages_switch()
    assert switch is not None
    before = switch(True)
    try:
        assert switch(False) is True
        assert switch(True) is False
    finally:
        switch(before)


def test_this_machine_has_glibc_so_the_heap_reuse_takes_effect():
    assert _glibc() is not None
    with heap_reuse() as reuse:
        assert reuse.active


@pytest.mark.parametrize("fail", [False, True])
def test_while_the_method_runs_huge_pages_are_off_and_freed_arrays_are_reused(fail):
    switch = huge_pages_switch()
    before = switch(False)        # faults counted in 4 KiB pages outside the method too
    try:
        outside = _faults_of_temporaries()
        switch(True)
        stage = _Stage()
        if fail:
            with pytest.raises(ValueError, match="stage failed"):
                stage.build(fail=True)
        else:
            assert stage.build() == "built"
        huge_pages_inside, faults_inside = stage.seen
        assert huge_pages_inside is False
        assert switch(False) is True                     # restored to on
        after = _faults_of_temporaries()
        # outside, each temporary faults in all its 9,766 pages; inside, the pages of the
        # one before are reused
        pages = np.ones(BLOCK).nbytes // resource.getpagesize()
        assert outside > 6 * pages
        assert faults_inside < 2 * pages
        assert after > 6 * pages                         # glibc's settings are back
    finally:
        switch(before)


def test_a_generator_cannot_be_wrapped():
    with pytest.raises(TypeError, match="generator"):
        for_large_arrays(lambda: (yield))
