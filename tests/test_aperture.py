"""aperture.py: aperture sums of a Moffat star against its analytic enclosed flux; the
CCD-equation variance against a Monte Carlo of Poisson and read noise (sky from the
annulus included); the noise area and masked-pixel weights against fine sub-sampling;
flag summaries and pixel repair on images whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from luigi_phot.photometry.aperture import (ApertureGeometry, annulus_sky, aperture_sums, ccd_variance,
                                            masked_overlaps, noise_area, pixel_flag_summary, repair_pixels,
                                            sky_estimate_factor)
from tests.rendered_stars import add_moffat_stars, moffat_enclosed_fraction, moffat_gamma

FWHM_PIX, BETA = 4.0, 2.5
#: wide enough that the pixel's own width (which the pixel-integrated image is convolved
#: with) moves the enclosed flux by less than 0.2%
WIDE_FWHM_PIX = 12.0


@pytest.fixture(scope="module")
def moffat_field():
    """Nine noiseless wide Moffat stars of 1e5 e at random sub-pixel positions."""
    rng = np.random.default_rng(21)
    xs, ys = np.meshgrid([50.0, 150.0, 250.0], [50.0, 150.0, 250.0])
    x = xs.ravel() + rng.uniform(-0.5, 0.5, 9)
    y = ys.ravel() + rng.uniform(-0.5, 0.5, 9)
    image = add_moffat_stars(np.zeros((300, 300)), x, y, np.full(9, 1e5), WIDE_FWHM_PIX, BETA, half_pix=48,
                             oversample=5)
    return image, x, y


@pytest.mark.parametrize("r_pix", [2.0, 4.0, 8.0, 16.0, 32.0])
def test_aperture_sums_are_the_analytic_enclosed_flux(moffat_field, r_pix):
    image, x, y = moffat_field
    total, err, area, partial, outside = aperture_sums(image, x, y, r_pix)
    assert err is None and not partial.any() and not outside.any()
    assert area == pytest.approx(np.pi * r_pix ** 2, rel=1e-9)
    expected = 1e5 * moffat_enclosed_fraction(r_pix, WIDE_FWHM_PIX, BETA)
    # Exact overlap spreads each rim pixel's light evenly over it, while the part inside
    # the circle is the brighter: sums come out low by about 2 pi r |dI/dr| / 12 over
    # the enclosed flux, 4 beta / (12 gamma^2) = 0.7% here at small radii, less further out.
    gamma = moffat_gamma(WIDE_FWHM_PIX, BETA)
    assert np.all(total <= expected)
    assert total == pytest.approx(expected, rel=0.001 + BETA / (3 * gamma ** 2))


def test_apertures_crossing_or_missing_the_frame_are_marked(moffat_field):
    image, _, _ = moffat_field
    _, _, _, partial, outside = aperture_sums(image, np.array([2.0, 120.0, -30.0, np.nan]),
                                              np.array([120.0, 120.0, 120.0, 5.0]), 4.0)
    assert partial.tolist()[:2] == [True, False]
    assert outside[2] and outside[3]


def _monte_carlo(flux_e: float, geometry: ApertureGeometry, sky_e: float, read_noise_e: float,
                 estimator: str, n: int = 4000, seed: int = 3):
    """Sky-subtracted aperture fluxes of `n` realisations of one star (random sub-pixel
    position) with Poisson noise of star and sky plus Gaussian read noise, and the n_sky
    of each; the star's light in the aperture (noiseless) for the Poisson term."""
    rng = np.random.default_rng(seed)
    size = 2 * int(np.ceil(geometry.r_out_pix)) + 5
    per_row = 50
    rows = int(np.ceil(n / per_row))
    light = np.full((rows * size, per_row * size), sky_e)
    cx = (np.arange(per_row) * size + size // 2)[None, :].repeat(rows, 0).ravel()[:n] + rng.uniform(-0.5, 0.5, n)
    cy = (np.arange(rows) * size + size // 2)[:, None].repeat(per_row, 1).ravel()[:n] + rng.uniform(-0.5, 0.5, n)
    add_moffat_stars(light, cx, cy, np.full(n, flux_e), FWHM_PIX, BETA, half_pix=size // 2, oversample=3)
    image = (rng.poisson(light) + rng.normal(0.0, read_noise_e, light.shape)).astype(np.float32)
    sky, _, n_sky, _ = annulus_sky(image, np.zeros(image.shape, np.uint8), cx, cy, geometry, estimator=estimator)
    total, _, area, _, _ = aperture_sums(image, cx, cy, geometry.r_ap_pix)
    star_in_aperture, _, _, _, _ = aperture_sums(light - sky_e, cx, cy, geometry.r_ap_pix)
    return total - sky * area, star_in_aperture, area, n_sky


@pytest.mark.parametrize("flux_e, estimator, geometry", [
    (3e3, "median", ApertureGeometry(2.4, 6.0, 9.0)),     # sky-limited, a small annulus: every term counts
    (3e3, "mean", ApertureGeometry(2.4, 6.0, 9.0)),
    (3e5, "median", ApertureGeometry(6.0, 10.0, 15.0)),   # bright: the star's own photon noise
])
def test_ccd_variance_is_the_monte_carlo_scatter(flux_e, estimator, geometry):
    sky_e, read_noise_e = 150.0, 8.0
    flux, star_light, area, n_sky = _monte_carlo(flux_e, geometry, sky_e, read_noise_e, estimator)
    measured_var = np.var(flux, ddof=1)
    model = ccd_variance(star_light, area, sky_e + read_noise_e ** 2, n_sky,
                         sky_factor=sky_estimate_factor(estimator), noise_area_pix=noise_area(geometry.r_ap_pix))
    # 4000 realisations: the measured variance is good to 2.2% (1 sigma)
    assert np.mean(model) == pytest.approx(measured_var, rel=0.07)
    if flux_e < 1e4 and estimator == "median":
        # the error of the sky estimate is a sixth of it here: leaving it out is seen
        without_sky_error = ccd_variance(star_light, area, sky_e + read_noise_e ** 2, np.full(n_sky.shape, 1e12),
                                         noise_area_pix=noise_area(geometry.r_ap_pix))
        assert np.mean(without_sky_error) < 0.9 * measured_var


def _overlap_by_subsampling(x: float, y: float, r_pix: float, size: int = 40, sub: int = 40) -> np.ndarray:
    """Fraction of each pixel of a size x size image inside the circle, by sub-sampling."""
    s = (np.arange(sub) + 0.5) / sub - 0.5
    yy, xx = np.mgrid[:size, :size]
    inside = np.zeros((size, size))
    for sy in s:
        inside += (np.hypot(xx[:, :, None] + s[None, None, :] - x, yy[:, :, None] + sy - y) <= r_pix).mean(axis=2)
    return inside / sub


@pytest.mark.parametrize("r_pix", [2.4, 5.9])
def test_noise_area_is_the_sum_of_squared_pixel_weights(r_pix):
    rng = np.random.default_rng(2)
    sums = [float(np.sum(_overlap_by_subsampling(20.0 + dx, 20.0 + dy, r_pix) ** 2))
            for dx, dy in rng.uniform(-0.5, 0.5, (8, 2))]
    assert noise_area(r_pix) == pytest.approx(np.mean(sums), rel=0.02)
    assert noise_area(r_pix) < 0.95 * np.pi * r_pix ** 2


def test_masked_overlap_weights_are_the_pixel_fractions_inside_the_aperture():
    flags = np.zeros((40, 40), dtype=np.uint8)
    flags[:, 21] = 1          # a bad column through the aperture
    flags[18, 16] = 8         # a cosmic ray, another bit
    x, y, r = np.array([20.3]), np.array([19.6]), 5.2
    truth = _overlap_by_subsampling(x[0], y[0], r)
    column = masked_overlaps(flags, 1, x, y, r)
    assert set(column.pixel % 40) == {21}
    assert column.weight.sum() == pytest.approx(truth[:, 21].sum(), rel=0.02)
    both = masked_overlaps(flags, 1 | 8, x, y, r)
    assert both.weight.sum() == pytest.approx(truth[:, 21].sum() + truth[18, 16], rel=0.02)
    assert np.array_equal(pixel_flag_summary(flags, np.array([20.3, 5.0]), np.array([19.6, 5.0]), r), [9, 0])


def test_a_bad_column_is_repaired_from_its_sides():
    yy, xx = np.mgrid[:30, :30]
    image = 100.0 + 2.0 * xx + 0.5 * yy
    truth = image.copy()
    bad = (yy * 30 + 12).ravel()[::30][:30]          # column 12
    image.ravel()[bad] = 1e6
    repair_pixels(image, bad, fill_value=0.0)
    assert np.allclose(image, truth)
    lonely = np.full((5, 5), np.nan)
    repair_pixels(lonely, np.array([12]), fill_value=-1.0)
    assert lonely[2, 2] == -1.0
