"""background.py and the sky annuli of aperture.py, against astropy's sigma clipping
(astropy.stats.sigma_clipped_stats) on generated sky with stars and outliers in the
annuli; the pixel noise and the sky mesh against the noise and sky they were made with."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.stats import sigma_clipped_stats

from luigi_phot.photometry.aperture import ApertureGeometry, annulus_sky
from luigi_phot.photometry.background import clipped_stats_sorted, pixel_noise, sky_mesh
from tests.rendered_stars import add_moffat_stars

SKY_E = 800.0
READ_NOISE_E = 6.0
GEOMETRY = ApertureGeometry(r_ap_pix=5.0, r_in_pix=9.0, r_out_pix=16.0)


def _percentile_sigma(values, axis=None):
    """The module's own spread statistic, for astropy: half the 15.87-84.13 percentile range."""
    return 0.5 * (np.nanpercentile(values, 84.13, axis=axis) - np.nanpercentile(values, 15.87, axis=axis))


@pytest.fixture(scope="module")
def crowded_sky():
    """A 400x400 sky in electrons (Poisson + read noise) with stars whose light falls in
    the annuli of the measured positions, cosmic-ray pixels, and a flagged hot patch."""
    rng = np.random.default_rng(5)
    shape = (400, 400)
    light = np.full(shape, SKY_E)
    add_moffat_stars(light, rng.uniform(0, 400, 300), rng.uniform(0, 400, 300),
                     10 ** rng.uniform(3.0, 5.0, 300), fwhm_pix=3.5, beta=3.0, half_pix=15)
    image = rng.poisson(light).astype(np.float64) + rng.normal(0, READ_NOISE_E, shape)
    hits = rng.integers(0, 400, (150, 2))
    image[hits[:, 1], hits[:, 0]] += rng.uniform(2e3, 3e4, 150)
    flags = np.zeros(shape, dtype=np.uint8)
    image[100:104, 200:230] = 6e4                      # a hot patch, flagged as bad
    flags[100:104, 200:230] = 1
    # positions on whole pixels: the annulus is then the pixels whose centres lie
    # between r_in and r_out, whatever rounding convention
    xs, ys = np.meshgrid(np.arange(30, 371, 34), np.arange(30, 371, 34))
    return image.astype(np.float32), flags, xs.ravel().astype(float), ys.ravel().astype(float)


def _annulus_values(image, flags, x, y):
    yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
    r = np.hypot(xx - x, yy - y)
    sel = (r >= GEOMETRY.r_in_pix) & (r <= GEOMETRY.r_out_pix) & (flags == 0)
    return image[sel].astype(np.float64)


def test_annulus_sky_is_astropys_clipped_median_and_resists_stars_and_hits(crowded_sky):
    image, flags, x, y = crowded_sky
    sky, sigma, n_sky, edge = annulus_sky(image, flags, x, y, GEOMETRY)
    assert not edge.any()
    pixel_sigma = np.sqrt(SKY_E + READ_NOISE_E ** 2)
    plain_mean = np.empty(x.size)
    for k in range(x.size):
        values = _annulus_values(image, flags, x[k], y[k])
        _, ref_median, ref_sigma = sigma_clipped_stats(values, sigma=3.0, maxiters=8, cenfunc="median",
                                                       stdfunc=_percentile_sigma)
        assert abs(sky[k] - ref_median) < 0.05 * pixel_sigma, (k, sky[k], ref_median)
        assert sigma[k] == pytest.approx(ref_sigma, rel=0.1)
        assert 0.7 * values.size <= n_sky[k] <= values.size
        plain_mean[k] = values.mean()
    # stars' light and hits pull a plain mean; the clipped median stays near the sky
    # (the faint wings of a crowded field still lift it a little)
    mean_bias = np.median(plain_mean - SKY_E)
    assert mean_bias > 0.5 * pixel_sigma, "the annuli must hold enough stars and hits for the test to mean anything"
    assert abs(np.median(sky - SKY_E)) < 0.2 * mean_bias
    assert np.median(sigma) == pytest.approx(pixel_sigma, rel=0.1)


def test_the_clipped_mean_matches_astropy_and_flagged_pixels_are_left_out():
    rng = np.random.default_rng(6)
    image = rng.normal(SKY_E, np.sqrt(SKY_E), (80, 80)).astype(np.float32)
    flags = np.zeros(image.shape, dtype=np.uint8)
    # a third of the annulus raised by 1.5 sigma (within any 3-sigma clip) and flagged
    image[:34, :] += 1.5 * np.sqrt(SKY_E)
    flags[:34, :] = 4
    at = np.array([40.0]), np.array([40.0])
    values = _annulus_values(image, flags, *at)
    mean, _, n_sky, _ = annulus_sky(image, flags, *at, GEOMETRY, estimator="mean")
    ref_mean, _, _ = sigma_clipped_stats(values, sigma=3.0, maxiters=8, cenfunc="median", stdfunc=_percentile_sigma)
    assert mean[0] == pytest.approx(ref_mean, abs=0.02 * np.sqrt(SKY_E))
    assert n_sky[0] <= values.size < 0.75 * np.pi * (GEOMETRY.r_out_pix ** 2 - GEOMETRY.r_in_pix ** 2)
    unflagged, _, n_all, _ = annulus_sky(image, np.zeros_like(flags), *at, GEOMETRY, estimator="mean")
    assert n_all[0] > values.size
    assert unflagged[0] - mean[0] > 0.25 * np.sqrt(SKY_E)


def test_an_annulus_off_the_frame_edge_uses_the_pixels_on_it(crowded_sky):
    image, flags, _, _ = crowded_sky
    sky, _, n_sky, edge = annulus_sky(image, flags, np.array([3.0, 200.0]), np.array([200.0, 396.0]), GEOMETRY)
    assert edge.all()
    for k, (x, y) in enumerate(((3.0, 200.0), (200.0, 396.0))):
        values = _annulus_values(image, flags, x, y)
        assert n_sky[k] <= values.size < 0.8 * np.pi * (GEOMETRY.r_out_pix ** 2 - GEOMETRY.r_in_pix ** 2)
        _, ref_median, _ = sigma_clipped_stats(values, sigma=3.0, maxiters=8, stdfunc=_percentile_sigma)
        assert sky[k] == pytest.approx(ref_median, abs=0.1 * np.sqrt(SKY_E))


def test_rows_with_too_few_values_give_nan():
    rows = np.sort(np.array([[1.0, 2.0, np.nan, np.nan], [1.0, 2.0, 3.0, 4.0]]), axis=1)
    med, sig, n = clipped_stats_sorted(rows, np.array([2, 4]))
    assert np.isnan(med[0]) and np.isnan(sig[0]) and n[0] == 0
    assert med[1] == pytest.approx(2.5) and n[1] == 4


def test_pixel_noise_is_the_temporal_noise_not_the_spread_of_a_crowded_field():
    rng = np.random.default_rng(8)
    shape = (300, 300)
    light = np.full(shape, 400.0)
    # a field of faint stars everywhere: static structure that inflates the pixel spread
    add_moffat_stars(light, rng.uniform(0, 300, 3000), rng.uniform(0, 300, 3000),
                     10 ** rng.uniform(2.5, 3.5, 3000), fwhm_pix=4.0, beta=3.0, half_pix=8)
    true_sigma = np.sqrt(light.mean() + 25.0)
    image = rng.poisson(light) + rng.normal(0, 5.0, shape)
    flags = np.zeros(shape, dtype=np.uint8)
    flags[:, 150] = 1
    image[:, 150] = 1e5                                     # a flagged hot column is ignored
    assert np.std(image[:, :150]) > 1.3 * true_sigma          # the spread is not the noise
    assert pixel_noise(image, flags) == pytest.approx(true_sigma, rel=0.08)


def test_sky_mesh_follows_a_sky_gradient_under_stars():
    rng = np.random.default_rng(9)
    ny, nx = 512, 512
    yy, xx = np.mgrid[:ny, :nx]
    true_sky = 300.0 + 0.4 * xx + 0.2 * yy
    light = true_sky.copy()
    add_moffat_stars(light, rng.uniform(0, nx, 150), rng.uniform(0, ny, 150), 10 ** rng.uniform(3, 5, 150),
                     fwhm_pix=3.0, beta=3.0, half_pix=12)
    image = rng.poisson(light).astype(np.float32)
    mesh = sky_mesh(image, np.zeros((ny, nx), np.uint8), box=64)
    assert mesh.level.shape == (8, 8)
    inner = (slice(48, 464), slice(48, 464))    # bilinear between box centres
    level = mesh.level_image((ny, nx))
    sigma_pix = np.sqrt(np.median(true_sky))
    assert np.median(np.abs(level[inner] - true_sky[inner])) < 0.15 * sigma_pix  # box medians: 0.08 sigma of noise
    assert np.max(np.abs(level[inner] - true_sky[inner])) < 0.5 * sigma_pix
    assert np.median(mesh.sigma) == pytest.approx(sigma_pix, rel=0.1)
    assert mesh.level_at(256.0, 256.0) == pytest.approx(true_sky[256, 256], abs=0.25 * sigma_pix)
