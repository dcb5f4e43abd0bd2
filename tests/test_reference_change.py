"""reference_change.py: the zero-point offset between an old and a new reference
catalogue of the same stars, seen through different transparency, exposure time and
seeing, with a pointing offset between their WCSs, variable stars among them; and
from the two references' measurements. The expected offset comes from the truth and
the analytic enclosed light of a Moffat profile."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS

from luigi_phot.photometry.catalogue import Catalogue
from luigi_phot.photometry.psf import MoffatPSF
from luigi_phot.photometry.reference_change import calibrate_on_measurements, calibrate_reference_change
from tests.rendered_stars import moffat_enclosed_fraction

SCALE_ARCSEC = 0.389
SHAPE = (600, 600)
N_STARS = 120
APERTURE = SimpleNamespace(aperture_arcsec=2.0, aperture_fwhm_multiple=None)


def _wcs(ra_deg: float, dec_deg: float) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra_deg, dec_deg]
    w.wcs.crpix = [300.5, 300.5]
    w.wcs.cdelt = [-SCALE_ARCSEC / 3600, SCALE_ARCSEC / 3600]
    return w


def _catalogue(ra, dec, rate, wcs: WCS, exptime_s: float, transparency: float, psf: MoffatPSF, name: str):
    x, y = wcs.all_world2pix(ra, dec, 0)
    stars = Table()
    stars["id"] = np.arange(ra.size)
    stars["ra"], stars["dec"] = ra, dec
    stars["x_ref"], stars["y_ref"] = x, y
    stars["flux_ref"] = rate * transparency * exptime_s          # total light (PSF photometry)
    stars["snr_ref"] = np.full(ra.size, 100.0)
    stars["detected"] = np.ones(ra.size, dtype=bool)
    stars["saturated_ref"] = np.zeros(ra.size, dtype=bool)
    stars["isolated"] = np.ones(ra.size, dtype=bool)
    stars["is_target"] = np.arange(ra.size) == 0
    return Catalogue(stars=stars, reference_image=name, shape=SHAPE, wcs_header=wcs.to_header(),
                     pixel_scale_arcsec=SCALE_ARCSEC, filter_name="ip", psf=psf, exptime_s=exptime_s,
                     mjd_mid=61300.0, sky_e=300.0, catalogue_id=name, key="k")


def _pair(seed: int = 1):
    rng = np.random.default_rng(seed)
    old_wcs = _wcs(268.0, -29.0)
    ra, dec = old_wcs.all_pix2world(rng.uniform(20, 580, N_STARS), rng.uniform(20, 580, N_STARS), 0)
    rate = 10 ** rng.uniform(1.5, 3.5, N_STARS)
    new_rate = rate.copy()
    new_rate[[5, 17, 40]] *= [1.6, 0.5, 2.2]                      # variables: the scale must ignore them
    old_psf, new_psf = MoffatPSF(3.0, beta=3.0), MoffatPSF(4.5, beta=2.8)
    old = _catalogue(ra, dec, rate, old_wcs, 60.0, 1.0, old_psf, "old.fits")
    # the new reference: through 30% more cloud, twice the exposure, worse seeing, and its
    # WCS (the telescope's pointing) 2 arcsec off
    new = _catalogue(ra, dec, new_rate, _wcs(268.0 + 2.0 / 3600, -29.0), 120.0, 0.7, new_psf, "new.fits")
    return old, new, old_psf, new_psf


def test_the_offset_is_the_change_of_flux_scale_in_the_aperture():
    old, new, old_psf, new_psf = _pair()
    step = calibrate_reference_change(old, new, APERTURE)
    r_old = APERTURE.aperture_arcsec / SCALE_ARCSEC
    in_aperture = [moffat_enclosed_fraction(r_old, p.fwhm_pix, p.beta) for p in (old_psf, new_psf)]
    expected = 2.5 * np.log10(0.7 * in_aperture[1] / in_aperture[0])
    assert step.offset_mag == pytest.approx(expected, abs=1e-6)
    assert step.n_stars == N_STARS - 3
    assert step.offset_err_mag < 1e-6


def test_catalogues_of_other_stars_are_refused():
    old, new, _, _ = _pair()
    far = _catalogue(np.asarray(new.stars["ra"]) + 0.5, np.asarray(new.stars["dec"]),
                     np.asarray(new.stars["flux_ref"]) / 120.0, _wcs(268.0, -29.0), 120.0, 1.0, new.psf, "far.fits")
    with pytest.raises(ValueError, match="do not match|matched"):
        calibrate_reference_change(old, far, APERTURE)


def test_the_offset_from_both_references_measured_against_the_old_catalogue():
    old, _, _, _ = _pair()
    rng = np.random.default_rng(3)
    rate = np.asarray(old.stars["flux_ref"]) / 60.0
    f_old = rate * 60.0 * 0.8 * rng.normal(1.0, 0.002, N_STARS)
    f_new = rate * 30.0 * 0.8 * 1.25 * rng.normal(1.0, 0.002, N_STARS)
    flags_new = np.zeros(N_STARS, dtype=np.int16)
    flags_new[:10] = 4
    f_new[:10] *= 3.0                                             # flagged: left out
    f_new[50] *= 1.5                                              # a variable: clipped
    step = calibrate_on_measurements(old, (f_old, np.zeros(N_STARS, np.int16), 60.0), (f_new, flags_new, 30.0))
    assert step.offset_mag == pytest.approx(2.5 * np.log10(1.25), abs=3 * step.offset_err_mag + 1e-4)
    assert step.n_stars == N_STARS - 11
    with pytest.raises(ValueError, match="measured well on both"):
        calibrate_on_measurements(old, (f_old, np.ones(N_STARS, np.int16), 60.0), (f_new, flags_new, 30.0))
