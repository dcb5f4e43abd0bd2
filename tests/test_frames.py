"""frames.mask_defective_lines on a crowded field without a bad-pixel mask: a hot
column and a dead row are flagged, and nothing else; a clean field, or one whose
lines differ everywhere, is left alone. (Reading frames and headers:
test_frame_headers.py, test_frames_fuzz.py.)"""

from __future__ import annotations

import numpy as np

from luigi_phot.photometry.frames import PIXEL_BAD, mask_defective_lines
from tests.rendered_stars import add_moffat_stars


def _crowded(seed: int, shape=(400, 500)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ny, nx = shape
    light = np.full(shape, 250.0)
    add_moffat_stars(light, rng.uniform(0, nx, 900), rng.uniform(0, ny, 900), 10 ** rng.uniform(2.5, 4.5, 900),
                     fwhm_pix=3.0, beta=3.0, half_pix=10)
    return rng.poisson(light).astype(np.float32)


def test_a_hot_column_and_a_dead_row_are_flagged_and_nothing_else():
    data = _crowded(1)
    data[:, 137] += 40.0                       # 2.5 sigma of a pixel: seen only in the column's median
    data[311, :] *= 0.3
    flags = np.zeros(data.shape, dtype=np.uint8)
    note = mask_defective_lines(data, flags)
    bad = flags & PIXEL_BAD != 0
    assert np.array_equal(np.flatnonzero(bad.all(axis=0)), [137])
    assert np.array_equal(np.flatnonzero(bad.all(axis=1)), [311])
    assert bad.sum() == data.shape[0] + data.shape[1] - 1
    assert note is not None and "x = 137" in note and "y = 311" in note


def test_a_clean_field_is_left_alone():
    data = _crowded(2)
    flags = np.zeros(data.shape, dtype=np.uint8)
    assert mask_defective_lines(data, flags) is None
    assert not flags.any()


def test_lines_that_differ_everywhere_are_structure_not_defects():
    data = _crowded(3)
    data[:, ::7] += 60.0                       # every seventh column: 14% of them
    flags = np.zeros(data.shape, dtype=np.uint8)
    assert mask_defective_lines(data, flags) is None
    assert not flags.any()
