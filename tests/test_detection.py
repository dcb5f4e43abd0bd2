"""detection.py on rendered stars (astropy's Moffat profile integrated over pixels, with
Poisson noise) with cosmic rays, an unflagged hot pixel and a saturated star: peaks
found where the stars are, centroids against the true positions, hits told from stars,
the seeing against the FWHM the stars were drawn with."""

from __future__ import annotations

import numpy as np
import pytest

from luigi_phot.photometry.background import sky_mesh
from luigi_phot.photometry.detection import (centroid_window_sigma, find_cosmic_rays, find_peaks, flag_flat_maximum,
                                             peak_shapes, star_peaks, star_sharpness_limit, windowed_centroids)
from tests.rendered_stars import add_moffat_stars

SKY_E, FWHM_PIX, BETA = 300.0, 3.2, 3.0
SHAPE = (480, 480)


@pytest.fixture(scope="module")
def field():
    """Stars on a jittered grid (no blends), single-pixel cosmic rays between them, an
    unflagged hot pixel, and one star clipped flat at the full well."""
    rng = np.random.default_rng(17)
    g = np.arange(20.0, 470.0, 30.0)
    x = np.repeat(g[None, :], g.size, 0).ravel() + rng.uniform(-4, 4, g.size ** 2)
    y = np.repeat(g[:, None], g.size, 1).ravel() + rng.uniform(-4, 4, g.size ** 2)
    flux = 10 ** rng.uniform(3.7, 5.3, x.size)          # peaks up to 13,000 e above the sky
    saturated = int(np.argmax(flux))
    flux[saturated] = 6e5                                 # its core clipped at the full well
    light = add_moffat_stars(np.full(SHAPE, SKY_E), x, y, flux, FWHM_PIX, BETA, half_pix=14)
    image = rng.poisson(light).astype(np.float64)
    # cosmic rays midway between grid stars (single pixels, 40-350 sigma)
    hx = rng.integers(0, g.size - 1, 25)
    hy = rng.integers(0, g.size - 1, 25)
    hits = np.unique(np.column_stack([(g[hy] + 15).astype(int), (g[hx] + 15).astype(int)]), axis=0)
    image[hits[:, 0], hits[:, 1]] += rng.uniform(700, 6000, len(hits))
    hot = (35, 230)                                  # (row, column) midway, unflagged
    assert hot not in {tuple(h) for h in hits}
    image[hot] = 8000.0
    image = np.minimum(image, 16000.0)
    flags = np.zeros(SHAPE, dtype=np.uint8)
    return image.astype(np.float32), flags, x, y, flux, hits, hot, saturated


def _nearest(px, py, x, y):
    d = np.hypot(px[:, None] - x[None, :], py[:, None] - y[None, :])
    return np.argmin(d, axis=1), np.min(d, axis=1)


def test_peaks_are_the_stars_and_the_defects_and_nothing_else(field):
    image, flags, x, y, flux, hits, hot, _ = field
    mesh = sky_mesh(image, flags, box=96)
    peaks = find_peaks(image, flags, mesh, nsigma=10.0)
    _, d_star = _nearest(peaks.x.astype(float), peaks.y.astype(float), x, y)
    defects = {tuple(h) for h in hits} | {hot}
    on_defect = np.array([(py, px) in defects for px, py in zip(peaks.x, peaks.y)])
    # a star's peak pixel is within 0.71 px of it, a little more with noise on its summit
    assert np.all((d_star <= 1.5) | on_defect), "a peak that is neither a star nor a defect"
    # every star bright enough (peak above 10 sigma of the sky) is found, once
    star_of_peak, _ = _nearest(peaks.x[~on_defect].astype(float), peaks.y[~on_defect].astype(float), x, y)
    assert len(set(star_of_peak)) == star_of_peak.size
    assert star_of_peak.size >= 0.97 * x.size
    assert on_defect.sum() == len(defects)
    assert np.all(np.diff(peaks.height) <= 0)


def test_windowed_centroids_find_the_true_positions(field):
    image, flags, x, y, flux, _, _, saturated = field
    mesh = sky_mesh(image, flags, box=96)
    bright = np.flatnonzero((flux > 3e4) & (np.arange(x.size) != saturated))
    start_x, start_y = np.rint(x[bright]), np.rint(y[bright])           # peak pixels
    cx, cy, converged = windowed_centroids(image, start_x, start_y, mesh.level_at(start_x, start_y),
                                           centroid_window_sigma(FWHM_PIX))
    assert converged.all()
    err = np.hypot(cx - x[bright], cy - y[bright])
    assert np.max(err) < 0.1 and np.median(err) < 0.025


def _psf_phases():
    """Pixel-integrated stars of the field's PSF at sub-pixel phases, for the sharpness limit."""
    return [add_moffat_stars(np.zeros((9, 9)), 4.0 + dx, 4.0 + dy, 1.0, FWHM_PIX, BETA, half_pix=4)
            for dx in (0.0, 0.25, 0.5) for dy in (0.0, 0.25, 0.5)]


def test_cosmic_rays_are_found_and_no_star_is_taken_for_one(field):
    image, flags, x, y, _, hits, hot, saturated = field
    limit = star_sharpness_limit(_psf_phases())
    assert 0.3 < limit < 0.9
    found = find_cosmic_rays(image, flags, SKY_E, np.sqrt(SKY_E), limit, grow=False)
    rows, cols = np.divmod(found, SHAPE[1])
    found_set = set(zip(rows.tolist(), cols.tolist()))
    assert {tuple(h) for h in hits} | {hot} == found_set
    grown = find_cosmic_rays(image, flags, SKY_E, np.sqrt(SKY_E), limit)
    assert grown.size <= 9 * len(found_set) and set(found).issubset(set(grown))


def test_star_peaks_leave_out_hot_pixels_and_hits_and_give_the_seeing(field):
    image, flags, x, y, flux, hits, hot, saturated = field
    flags = flags.copy()
    assert flag_flat_maximum(image, flags) >= 4
    sy, sx = int(round(y[saturated])), int(round(x[saturated]))
    assert flags[sy, sx] & 2
    mesh = sky_mesh(image, flags, box=96)
    peaks, fwhm = star_peaks(image, flags, mesh, nsigma=10.0, max_stars=500)
    assert fwhm == pytest.approx(FWHM_PIX, rel=0.1)
    _, d_star = _nearest(peaks.x.astype(float), peaks.y.astype(float), x, y)
    assert np.all(d_star <= 1.5), "a defect among the stars"
    assert len(peaks) >= 0.95 * (x.size - 1)
    assert not np.any((peaks.x == sx) & (peaks.y == sy)), "the saturated star is no seeing star"
    defects = [tuple(h) for h in hits] + [hot]
    spikes = find_peaks(image, flags, mesh, 10.0)
    is_defect = np.array([(py, px) in set(defects) for px, py in zip(spikes.x, spikes.y)])
    shapes = peak_shapes(image, spikes, mesh.level_at(spikes.x, spikes.y), np.sqrt(SKY_E))
    assert shapes.single_pixel[is_defect].all()
    assert not shapes.single_pixel[~is_defect].any()
