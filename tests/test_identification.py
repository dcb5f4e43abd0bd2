"""Target identification (photometry/identification.py) and the rule that fails a dataset
whose target points are mostly not the star's own light (lightcurve.py), on star lists
from the generator's sky: fast, no pixels."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from luigi_phot.photometry import flags as F
from luigi_phot.photometry.identification import CORE_FWHM, COORDINATE_ERROR_ARCSEC, identify_target
from luigi_phot.photometry.lightcurve import IdentificationError, check_target_identification
from luigi_phot.synthetic import SyntheticConfig
from luigi_phot.synthetic.plan import _make_plan, _nominal_wcs


@pytest.fixture(scope="module")
def field():
    """Pixel positions and fluxes of a crowded generated field (2000 stars on 800x800 at 0.389"/px)."""
    cfg = SyntheticConfig(seed=21, n_frames=2, n_nights=1, shape=(800, 800), n_stars=2000)
    plan = _make_plan(cfg)
    x, y = _nominal_wcs(cfg).all_world2pix(np.asarray(plan.stars["ra_deg"]), np.asarray(plan.stars["dec_deg"]), 0)
    flux = np.asarray(plan.stars["flux_e_per_s"], float) * 120
    bright = (flux > 3000) & (x > 0) & (x < 800) & (y > 0) & (y < 800)   # what a detection would find
    return x[bright], y[bright], flux[bright]


def test_the_nearest_star_within_the_radius_is_the_target_whatever_the_offset(field):
    x, y, flux = field
    rng = np.random.default_rng(1)
    hits = 0
    for row in rng.choice(x.size, 200, replace=False):
        # coordinates up to 1.5" off, header WCS 2" off: 3.5" at most, 9 px at 0.389"/px
        off = rng.uniform(0, 3.5) / 0.389
        ang = rng.uniform(0, 2 * np.pi)
        tx, ty = x[row] + off * np.cos(ang), y[row] + off * np.sin(ang)
        choice = identify_target(x, y, flux, tx, ty, fwhm_pix=5.0, scale_arcsec=0.389, wcs_error_arcsec=1.2)
        d = np.hypot(x - tx, y - ty)
        assert choice.radius_pix >= 3 * np.hypot(COORDINATE_ERROR_ARCSEC, 1.2) / 0.389 - 1e-9
        assert d[choice.row] <= choice.radius_pix
        # the nearest star, or a brighter one not much farther (and then it says so)
        margin = max(choice.sigma_pix, 2.5)
        nearer = np.flatnonzero(d < d[choice.row])
        assert d[choice.row] - d.min() <= margin and np.all(flux[nearer] <= flux[choice.row])
        assert choice.ambiguous == (nearer.size > 0) or choice.ambiguous
        hits += choice.row == row
    # the true star is the nearest to the offset position in most draws of a crowded field
    assert hits >= 150


def test_the_radius_follows_the_psf_at_2_arcsec_per_pixel_and_the_uncertainty_at_0_39():
    x, y, flux = np.array([100.0, 160.0]), np.array([100.0, 100.0]), np.array([5e4, 5e4])
    # 2.07"/px, FWHM 1.9 px: the star 1.5 px (3.1") from the coordinates is within 1.5 FWHM
    wide = identify_target(x, y, flux, 101.5, 100.0, fwhm_pix=1.9, scale_arcsec=2.07, wcs_error_arcsec=0.2)
    assert wide.row == 0 and wide.radius_pix == pytest.approx(CORE_FWHM * 1.9)
    # the old fixed 1" radius would have placed a phantom 1.5 px from the star
    fixed = identify_target(x, y, flux, 101.5, 100.0, fwhm_pix=1.9, scale_arcsec=2.07, wcs_error_arcsec=0.2,
                            override_radius_arcsec=1.0)
    assert fixed.row == 0 and fixed.warnings, "a phantom inside the star's core is never placed"
    # 0.389"/px in good seeing (FWHM 2.6 px), header WCS 1.5" uncertain: radius from the uncertainty
    sharp = identify_target(x, y, flux, 100 + 3.0 / 0.389, 100.0, fwhm_pix=2.6, scale_arcsec=0.389,
                            wcs_error_arcsec=1.5)
    assert sharp.row == 0 and sharp.radius_pix * 0.389 == pytest.approx(3 * np.hypot(0.7, 1.5))


def test_a_phantom_target_is_never_within_the_core_of_a_detected_star(field):
    x, y, flux = field
    rng = np.random.default_rng(2)
    phantoms = 0
    for _ in range(400):
        tx, ty = rng.uniform(50, 750, 2)
        for override in (None, 0.2):
            c = identify_target(x, y, flux, tx, ty, fwhm_pix=4.0, scale_arcsec=0.389, wcs_error_arcsec=0.1,
                                override_radius_arcsec=override)
            if c.row is None:
                phantoms += 1
                assert np.min(np.hypot(x - c.x, y - c.y)) > CORE_FWHM * 4.0
                assert any("placed at its coordinates" in n for n in c.notes)
    assert phantoms > 50, "the draw must include empty places too"


def test_two_candidates_at_comparable_distances_are_both_named_and_the_brightest_kept():
    x = np.array([200.0, 200.0 + 4.0, 200.0 - 3.0])
    y = np.array([200.0, 200.0, 200.0 + 40.0])
    flux = np.array([1.0e4, 3.0e4, 5e4])
    c = identify_target(x, y, flux, 201.6, 200.0, fwhm_pix=4.0, scale_arcsec=0.389, wcs_error_arcsec=0.3)
    assert c.row == 1 and c.ambiguous
    (warning,) = c.warnings
    assert "ambiguous" in warning and "star 0 at" in warning and "star 1 at" in warning
    assert "3e+04" in warning and "1e+04" in warning, "brightness of both is named"
    assert "the brightest is the target" in warning
    # a brighter star clearly farther away is not taken: the nearest is
    far = identify_target(x, y, flux, 199.0, 200.0, fwhm_pix=2.0, scale_arcsec=0.389, wcs_error_arcsec=0.1)
    assert far.row == 0 and not far.ambiguous
    # far apart: no ambiguity
    alone = identify_target(x, y, flux, 200.2, 200.0, fwhm_pix=1.5, scale_arcsec=0.389, wcs_error_arcsec=0.05)
    assert alone.row == 0 and not alone.ambiguous and not alone.warnings


def _lc(flags) -> Table:
    return Table({"flags": np.asarray(flags, np.int32)})


def test_a_light_curve_mostly_blended_or_absent_fails_in_one_line_naming_the_finder_chart():
    assert F.BLENDED_OR_ABSENT == 512 and F.BLENDED_OR_ABSENT & F.SEVERE
    assert F.describe(512 | 128) == "crowded|blended_or_absent"
    bad = F.BLENDED_OR_ABSENT
    with pytest.raises(IdentificationError) as err:
        check_target_identification(_lc([bad] * 6 + [0] * 4 + [F.FRAME_REJECTED] * 5), "OGLE-1", "ip")
    text = str(err.value)
    assert "\n" not in text and "6 of 10" in text and "OGLE-1_ip_finder.png" in text
    # half or fewer: the points are flagged (kept out of the TOM), the dataset goes on
    check_target_identification(_lc([bad] * 5 + [0] * 5), "OGLE-1", "ip")
    check_target_identification(_lc([F.FRAME_REJECTED] * 3), "OGLE-1", "ip")


def test_the_generator_puts_header_wcs_and_coordinates_off_by_what_it_is_asked(tmp_path):
    from astropy.io import fits

    from luigi_phot.config import load_reduction_config
    from luigi_phot.synthetic import generate_dataset

    cfg = SyntheticConfig(seed=3, n_frames=6, n_nights=2, shape=(256, 256), n_stars=200, bad_column=None,
                          wcs_error_range_arcsec=(0.0, 3.0), wcs_rotation_error_deg=0.05,
                          target_coord_offset_arcsec=1.5, wcs_pointing_offset_arcsec=30.0, wcs_status=4)
    ds = generate_dataset(tmp_path / "ip", cfg)
    err = np.asarray(ds.truth["header_wcs_error_arcsec"])
    assert np.all((err > 27) & (err < 33.5)), err          # the 30" pointing plus 0-3" per frame
    assert np.ptp(err) > 1.0
    assert fits.getheader(ds.frame_paths[0], "SCI")["WCSERR"] == 4
    given = load_reduction_config(ds.config_path, check_tom_file=False).target
    ra, dec = ds.truth.meta["target_ra_deg"], ds.truth.meta["target_dec_deg"]
    off = np.hypot((given.ra_deg - ra) * np.cos(np.radians(dec)), given.dec_deg - dec) * 3600
    assert off == pytest.approx(1.5, abs=0.01)
    # the defaults' frames are untouched by the new options' draws
    plain = _make_plan(SyntheticConfig(seed=3, n_frames=6, n_nights=2, shape=(256, 256), n_stars=200, bad_column=None))
    assert plain.given_ra == plain.target_ra and plain.given_dec == plain.target_dec
