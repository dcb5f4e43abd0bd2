"""Alignment on star lists, directly (no frames, no Luigi): known transformations of
any rotation (the 180-degree meridian flip included), mirror, scale and shift found
from the star pattern alone; outliers (defects among the detections, stars missing
from either list) ignored; a wrong header WCS overruled by the pattern and said so;
a failure that names what was tried and what was found."""

from __future__ import annotations

import numpy as np
import pytest

from luigi_phot.photometry.alignment import AlignmentError, align, match_star_lists

SHAPE = (1024, 1024)


def _similarity(rotation_deg: float, scale: float, shift, mirror: bool = False) -> np.ndarray:
    """2x3 matrix: frame = R(rotation) S(scale) M(mirror) ref + shift, about the frame centre."""
    c, s = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    lin = scale * np.array([[c, -s], [s, c]]) @ np.diag([1.0, -1.0 if mirror else 1.0])
    centre = np.array([SHAPE[1] / 2, SHAPE[0] / 2])
    return np.column_stack([lin, centre + np.asarray(shift, float) - lin @ centre])


def _apply(m, xy):
    return xy @ m[:, :2].T + m[:, 2]


def _star_lists(m, seed: int, n: int = 400, noise_pix: float = 0.03, lost: float = 0.2, outliers: int = 60):
    """Reference stars (brightest first) and the frame's detections under transform m:
    centroid noise, a fraction of stars lost (faint, or off the frame), and defects
    (hot pixels, cosmic rays) mixed in among the brightest."""
    rng = np.random.default_rng(seed)
    ref = rng.uniform(0, SHAPE[1], (n, 2))
    frame = _apply(m, ref) + rng.normal(0, noise_pix, (n, 2))
    ny, nx = SHAPE
    kept = (rng.random(n) > lost) & (frame[:, 0] >= 0) & (frame[:, 0] < nx) & (frame[:, 1] >= 0) & (frame[:, 1] < ny)
    frame = frame[kept]
    junk = rng.uniform(0, SHAPE[1], (outliers, 2))
    mixed = np.insert(frame, rng.integers(0, len(frame), outliers), junk, axis=0)
    return ref, mixed


def _max_error(m_fit, m_true, ref) -> float:
    return float(np.max(np.hypot(*(_apply(m_fit, ref) - _apply(m_true, ref)).T)))


@pytest.mark.parametrize("rotation_deg, scale, shift, mirror", [
    (0.3, 1.0, (12.0, -9.0), False),          # the usual jitter
    (180.0, 1.0, (5.0, 7.0), False),          # a meridian flip
    (180.2, 1.0, (-300.0, 250.0), False),     # flipped and offset by a third of the frame
    (73.0, 1.03, (40.0, -20.0), False),       # any rotation, 3% scale
    (-121.0, 0.97, (0.0, 0.0), False),
    (0.0, 1.0, (-480.0, 10.0), False),        # offset by half the frame
    (90.0, 1.0, (3.0, 3.0), True),            # a mirrored camera
])
def test_the_star_pattern_alone_finds_known_transformations(rotation_deg, scale, shift, mirror):
    m_true = _similarity(rotation_deg, scale, shift, mirror)
    ref, frame = _star_lists(m_true, seed=int(abs(rotation_deg) * 10) + 1)
    aln = align(ref, frame, frame_shape=SHAPE)
    assert aln.method == "pattern"
    assert _max_error(aln.matrix, m_true, ref) < 0.05, aln
    assert aln.rms_pix < 0.1 and aln.n_matched >= 50
    assert aln.rotation_deg == pytest.approx((rotation_deg + 180) % 360 - 180, abs=0.01) or mirror
    assert aln.scale == pytest.approx(scale, rel=1e-4)


@pytest.mark.parametrize("rotation_deg, mirror", [(37.0, True), (-152.0, False)])
def test_a_general_affine_transform_is_recovered(rotation_deg, mirror):
    """Not only similarities: pixel scales that differ by 2% between the axes and a
    small shear (a tilted detector, field distortion over the frame), with rotation,
    flip and offset, are fitted to a small fraction of a pixel at every star."""
    c, s = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    lin = np.array([[c, -s], [s, c]]) @ np.array([[1.012, 0.006], [0.0, 0.991]])
    lin = lin @ np.diag([1.0, -1.0 if mirror else 1.0])
    centre = np.array([SHAPE[1] / 2, SHAPE[0] / 2])
    m_true = np.column_stack([lin, centre + np.array([23.0, -61.0]) - lin @ centre])
    ref, frame = _star_lists(m_true, seed=int(abs(rotation_deg)))
    aln = align(ref, frame, frame_shape=SHAPE)
    assert aln.method == "pattern"
    assert np.allclose(aln.matrix[:, :2], lin, atol=2e-4)
    assert _max_error(aln.matrix, m_true, ref) < 0.05
    assert aln.n_matched >= 200


def test_star_list_matching_is_deterministic_and_takes_two_lists():
    m_true = _similarity(180.0, 1.0, (20.0, -15.0))
    ref, frame = _star_lists(m_true, seed=3)
    first, n_first = match_star_lists(ref, frame)
    again, n_again = match_star_lists(ref, frame)
    assert first is not None and np.array_equal(first, again) and n_first == n_again
    assert _max_error(first, m_true, ref) < 1.0  # a first guess, refined by align()


def test_a_sparse_field_of_forty_stars_with_defects_aligns():
    m_true = _similarity(179.7, 1.0, (8.0, -11.0))
    ref, frame = _star_lists(m_true, seed=11, n=40, lost=0.15, outliers=15)
    aln = align(ref, frame, frame_shape=SHAPE)
    assert _max_error(aln.matrix, m_true, ref) < 0.05


def test_a_correct_header_wcs_is_used_without_the_pattern():
    m_true = _similarity(0.3, 1.0, (12.0, -9.0))
    ref, frame = _star_lists(m_true, seed=5)
    aln = align(ref, frame, guess=m_true + np.array([[0, 0, 0.4], [0, 0, -0.3]]), frame_shape=SHAPE)
    assert aln.method == "wcs" and aln.note == ""
    assert _max_error(aln.matrix, m_true, ref) < 0.05


def test_a_header_wcs_off_by_many_pixels_gives_way_to_the_pattern_and_says_so():
    m_true = _similarity(0.3, 1.0, (12.0, -9.0))
    ref, frame = _star_lists(m_true, seed=6)
    off = m_true.copy()
    off[:, 2] += (25.0, -40.0)
    aln = align(ref, frame, guess=off, frame_shape=SHAPE)
    assert aln.method == "pattern"
    assert "header WCS off by 47 px from the star pattern" in aln.note, aln.note
    assert _max_error(aln.matrix, m_true, ref) < 0.05


def test_a_header_wcs_that_misses_the_meridian_flip_gives_way_to_the_pattern():
    """Capture software that writes the mount's pointing as the WCS, unaware of the
    pier side: the header is turned 180 degrees from the truth."""
    m_true = _similarity(180.0, 1.0, (6.0, 4.0))
    ref, frame = _star_lists(m_true, seed=7)
    aln = align(ref, frame, guess=_similarity(0.0, 1.0, (6.0, 4.0)), frame_shape=SHAPE)
    assert aln.method == "pattern" and "header WCS" in aln.note and "star pattern used" in aln.note
    assert _max_error(aln.matrix, m_true, ref) < 0.05


def test_a_frame_of_other_stars_is_rejected_naming_what_was_tried():
    rng = np.random.default_rng(9)
    ref = rng.uniform(0, 1024, (300, 2))
    other = rng.uniform(0, 1024, (300, 2))
    with pytest.raises(AlignmentError) as err:
        align(ref, other, guess=_similarity(0.0, 1.0, (0.0, 0.0)), frame_shape=SHAPE)
    text = str(err.value)
    assert text.startswith("alignment failed (") and "header WCS" in text and "star pattern" in text, text
    assert "\n" not in text


def test_unrelated_star_lists_are_never_aligned_from_sparse_to_dense():
    """Chance pairs: whatever the densities, with or without a guess, no transform is
    accepted between lists of different stars, and the reason says what was found."""
    rng = np.random.default_rng(12)
    for trial in range(40):
        n_ref, n_frame = int(rng.choice([30, 120, 800])), int(rng.choice([20, 100, 400]))
        ref = rng.uniform(0, 512, (n_ref, 2))
        other = rng.uniform(0, 512, (n_frame, 2))
        guess = _similarity(0.0, 1.0, (0.0, 0.0)) if trial % 2 else None
        with pytest.raises(AlignmentError, match="chance|star pattern: no match"):
            align(ref, other, guess=guess, frame_shape=(512, 512), search_radius_pix=300.0)

