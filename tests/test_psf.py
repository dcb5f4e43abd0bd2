"""psf.py: fit_psf recovering the FWHM and beta of Moffat stars drawn with astropy's own
profile, integrated over the pixels (undersampled to wide), with Poisson and read
noise; a star hit by a cosmic ray left out; the PSF's size across the frame followed;
MoffatPSF's pixel values and enclosed light against the same independent profile."""

from __future__ import annotations

import numpy as np
import pytest

from luigi_phot.photometry.psf import MoffatPSF, fit_psf
from tests.rendered_stars import add_moffat_stars, moffat_enclosed_fraction

SKY_E, READ_NOISE_E = 200.0, 7.0


def _star_field(fwhm_pix, beta: float, seed: int, n_side: int = 6, spacing: int = 60):
    """A grid of isolated stars (random sub-pixel positions, 2e4-2e5 e) with noise.
    `fwhm_pix` is one value, or a function of x giving each star's FWHM."""
    rng = np.random.default_rng(seed)
    size = n_side * spacing
    g = (np.arange(n_side) + 0.5) * spacing
    x = np.repeat(g[None, :], n_side, 0).ravel() + rng.uniform(-0.5, 0.5, n_side ** 2)
    y = np.repeat(g[:, None], n_side, 1).ravel() + rng.uniform(-0.5, 0.5, n_side ** 2)
    flux = 10 ** rng.uniform(4.3, 5.3, x.size)
    light = np.full((size, size), SKY_E)
    for k in range(x.size):
        fwhm = fwhm_pix(x[k]) if callable(fwhm_pix) else fwhm_pix
        add_moffat_stars(light, x[k], y[k], flux[k], fwhm, beta, half_pix=28)
    image = rng.poisson(light) + rng.normal(0.0, READ_NOISE_E, light.shape)
    return image, x, y, flux


@pytest.mark.parametrize("fwhm_pix, beta", [(1.6, 3.0), (3.0, 2.5), (6.0, 4.0)])
def test_fit_psf_recovers_fwhm_and_beta(fwhm_pix, beta):
    image, x, y, flux = _star_field(fwhm_pix, beta, seed=int(fwhm_pix * 10))
    fit = fit_psf(image, x, y, SKY_E + READ_NOISE_E ** 2, fwhm_guess=1.3 * fwhm_pix, size_field=False)
    assert fit.psf.fwhm_pix == pytest.approx(fwhm_pix, rel=0.02)
    assert fit.psf.beta == pytest.approx(beta, rel=0.05)
    assert fit.psf.ellipticity < 0.03
    assert fit.n_stars >= 0.9 * x.size
    assert fit.chi2_per_dof == pytest.approx(1.0, abs=0.15)
    assert np.median(fit.flux[fit.used] / flux[fit.used]) == pytest.approx(1.0, abs=0.01)


def test_a_star_hit_by_a_cosmic_ray_is_left_out():
    image, x, y, _ = _star_field(3.0, 3.0, seed=4)
    hit = 7
    image[int(round(y[hit])) + 2, int(round(x[hit])) - 1] += 3e4
    fit = fit_psf(image, x, y, SKY_E + READ_NOISE_E ** 2, fwhm_guess=3.5, size_field=False)
    assert not fit.used[hit]
    assert fit.psf.fwhm_pix == pytest.approx(3.0, rel=0.02)


def test_the_size_field_follows_the_fwhm_across_the_frame():
    size = 8 * 55
    image, x, y, _ = _star_field(lambda xs: 2.6 + 0.8 * xs / size, 3.0, seed=6, n_side=8, spacing=55)
    fit = fit_psf(image, x, y, SKY_E + READ_NOISE_E ** 2, fwhm_guess=3.0)
    assert fit.size is not None and fit.size.varies
    left, right = (fit.psf.fwhm_pix * fit.size.scale_at(xs, size / 2) for xs in (0.1 * size, 0.9 * size))
    assert left == pytest.approx(2.6 + 0.08, rel=0.04)
    assert right == pytest.approx(2.6 + 0.72, rel=0.04)


@pytest.mark.parametrize("fwhm_pix, beta", [(1.2, 2.5), (4.0, 3.5)])
def test_moffat_pixel_values_and_enclosed_light_match_astropys_profile(fwhm_pix, beta):
    psf = MoffatPSF(fwhm_pix, beta=beta)
    stamp = add_moffat_stars(np.zeros((61, 61)), 30.3, 29.8, 1.0, fwhm_pix, beta, half_pix=30, oversample=15)
    yy, xx = np.mgrid[:61, :61]
    ours = psf.pixel_values(xx - 30.3, yy - 29.8)
    core = stamp > 0.01 * stamp.max()
    assert np.max(np.abs(ours[core] - stamp[core]) / stamp[core]) < 0.02
    for fraction in (0.5, 0.9, 0.99):
        r = psf.radius_containing(fraction)
        assert moffat_enclosed_fraction(r, fwhm_pix, beta) == pytest.approx(fraction, abs=1e-9)
