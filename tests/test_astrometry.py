"""Absolute astrometry of the reference frame (photometry/astrometry.py): the Gaia DR3
query, its parse and cache against a local stand-in for the archive answering in its
documented format (tests/gaia_archive.py), the WCS refined against a catalogue, a frame
with no WCS solved by star patterns, the header WCSs' disagreement; fast, on the
generator's star lists. End-to-end reductions are in test_identification_e2e.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS

from luigi_phot.photometry.astrometry import (AstrometryError, AstrometryRequest, GaiaUnavailable, ReferenceStars,
                                              gaia_stars, header_wcs_scatter, query_gaia_dr3, reference_astrometry,
                                              refine_wcs, solve_by_pattern)
from luigi_phot.synthetic import SyntheticConfig
from luigi_phot.synthetic.plan import _make_plan
from tests.gaia_archive import GaiaArchive, gaia_table_from_synthetic

SHAPE = (600, 600)
SCALE = 0.389
EPOCH = 2026.5


@pytest.fixture(scope="module")
def sky() -> Table:
    """The generator's stars of a crowded field (ra_deg, dec_deg, mag, ...)."""
    cfg = SyntheticConfig(seed=41, n_frames=2, n_nights=1, shape=SHAPE, n_stars=1500)
    return _make_plan(cfg).stars


def _wcs(ra, dec, scale=SCALE, rotation_deg=0.0, parity=-1, shape=SHAPE):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(shape[1] + 1) / 2, (shape[0] + 1) / 2]
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    p = scale / 3600
    w.wcs.cd = np.array([[parity * p, 0], [0, p]]) @ np.array([[c, -s], [s, c]])
    return w


def _detections(sky: Table, true: WCS, shape=SHAPE, limit_mag=19.5, seed=0):
    """What detection on the frame would give: stars brighter than limit_mag on the frame,
    brightest first, positions with 0.05 px of centroid noise."""
    x, y = true.all_world2pix(np.asarray(sky["ra_deg"]), np.asarray(sky["dec_deg"]), 0)
    on = (x > 2) & (x < shape[1] - 3) & (y > 2) & (y < shape[0] - 3) & (np.asarray(sky["mag"]) < limit_mag)
    order = np.flatnonzero(on)[np.argsort(np.asarray(sky["mag"])[on])]
    rng = np.random.default_rng(seed)
    return np.column_stack([x[order], y[order]]) + rng.normal(0, 0.05, (order.size, 2))


def _stars(sky: Table, limit_mag=20.0) -> ReferenceStars:
    s = sky[np.asarray(sky["mag"]) < limit_mag]
    return ReferenceStars(np.asarray(s["ra_deg"], float), np.asarray(s["dec_deg"], float),
                          np.asarray(s["mag"], float), "test catalogue", "mag")


def _target(sky):
    return sky[np.asarray(sky["is_target"])][0]


def _offset(w: WCS, arcsec: float, angle_deg: float, rotation_deg: float = 0.0) -> WCS:
    """The same WCS with its pointing off by `arcsec` and turned by rotation_deg."""
    ra, dec = w.wcs.crval
    da = arcsec / 3600 * math.cos(math.radians(angle_deg)) / math.cos(math.radians(dec))
    dd = arcsec / 3600 * math.sin(math.radians(angle_deg))
    return _wcs(ra + da, dec + dd, rotation_deg=rotation_deg)


@pytest.mark.parametrize("off_arcsec,rotation_deg,search", [(2.0, 0.05, 60.0), (3.0, -0.1, 60.0), (30.0, 0.2, 600.0)])
def test_a_header_wcs_off_by_arcseconds_is_refined_to_a_twentieth_of_an_arcsec(sky, off_arcsec, rotation_deg, search):
    t = _target(sky)
    true = _wcs(float(t["ra_deg"]) + 0.002, float(t["dec_deg"]) - 0.001)
    header = _offset(true, off_arcsec, 37.0, rotation_deg)
    det = _detections(sky, true)
    sol = refine_wcs(header, det, _stars(sky), SHAPE, fwhm_pix=5.0, search_radius_arcsec=search)
    assert sol is not None and sol.refined and sol.n_matched >= 100
    assert sol.rms_arcsec < 0.05
    assert sol.correction_arcsec == pytest.approx(off_arcsec, rel=0.2, abs=0.3)
    truth_xy = true.all_world2pix([[t["ra_deg"], t["dec_deg"]]], 0)[0]
    got_xy = sol.wcs.all_world2pix([[t["ra_deg"], t["dec_deg"]]], 0)[0]
    assert np.hypot(*(got_xy - truth_xy)) * SCALE < 0.05
    assert sol.uncertainty_arcsec < 0.1
    # before: the header put the target this far off
    assert np.hypot(*(header.all_world2pix([[t["ra_deg"], t["dec_deg"]]], 0)[0] - truth_xy)) * SCALE > 1.5


def test_a_catalogue_of_another_field_is_not_matched(sky):
    t = _target(sky)
    true = _wcs(float(t["ra_deg"]), float(t["dec_deg"]))
    det = _detections(sky, true)
    elsewhere = _stars(sky)
    elsewhere.ra_deg = elsewhere.ra_deg[::-1].copy()     # same stars' numbers, shuffled positions
    assert refine_wcs(true, det, elsewhere, SHAPE, fwhm_pix=5.0) is None
    # nor a dense catalogue of random stars, where chance pairs are within the tolerance everywhere
    rng = np.random.default_rng(3)
    n = 8000
    rx, ry = rng.uniform(0, SHAPE[1], n), rng.uniform(0, SHAPE[0], n)
    r_ra, r_dec = true.all_pix2world(rx, ry, 0)
    dense = ReferenceStars(r_ra, r_dec, rng.uniform(12, 20, n), "random stars")
    assert refine_wcs(true, det, dense, SHAPE, fwhm_pix=5.0) is None


@pytest.mark.parametrize("rotation_deg,parity", [(180.0, -1), (73.0, 1)])
def test_a_frame_without_wcs_is_solved_by_star_patterns_around_the_target(sky, rotation_deg, parity):
    t = _target(sky)
    # the camera pointed 40" from the target, turned and (second case) mirrored
    true = _wcs(float(t["ra_deg"]) + 30 / 3600, float(t["dec_deg"]) - 27 / 3600, rotation_deg=rotation_deg,
                parity=parity)
    det = _detections(sky, true)
    sol = solve_by_pattern(det, _stars(sky), float(t["ra_deg"]), float(t["dec_deg"]), SCALE, SHAPE, fwhm_pix=5.0)
    assert sol is not None and sol.n_matched >= 50 and sol.rms_arcsec < 0.05
    truth_xy = true.all_world2pix([[t["ra_deg"], t["dec_deg"]]], 0)[0]
    assert np.hypot(*(sol.wcs.all_world2pix([[t["ra_deg"], t["dec_deg"]]], 0)[0] - truth_xy)) * SCALE < 0.05


def test_the_header_wcs_disagreement_between_frames_measures_their_error(sky):
    t = _target(sky)
    rng = np.random.default_rng(5)
    true_errors = rng.uniform(0.5, 3.0, 9)
    frames = []
    for k, err in enumerate(true_errors):
        true = _wcs(float(t["ra_deg"]) + rng.uniform(-5, 5) / 3600, float(t["dec_deg"]) + rng.uniform(-5, 5) / 3600)
        frames.append((_offset(true, err, rng.uniform(0, 360)), _detections(sky, true, seed=k)))
    ref, others = frames[0], frames[1:]
    sigma, offsets = header_wcs_scatter(others, ref)
    assert len(offsets) == 8
    rms_true = math.sqrt(np.mean(true_errors ** 2))
    assert 0.5 * rms_true < sigma < 1.5 * rms_true
    # identical headers: no disagreement
    same, _ = header_wcs_scatter([ref, ref], ref)
    assert same < 0.05


# --------------------------------------------------------------------------
# Gaia DR3: query, parse, cache
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(sky):
    with GaiaArchive(gaia_table_from_synthetic(sky, EPOCH)) as a:
        yield a


def test_the_gaia_query_is_a_tap_cone_search_parsed_from_the_archive_votable(sky, archive):
    t = _target(sky)
    n_before = len(archive.queries)
    table = query_gaia_dr3(float(t["ra_deg"]), float(t["dec_deg"]), 1.0 / 60, archive.url)
    (adql,) = archive.queries[n_before:]
    assert "gaiadr3.gaia_source" in adql and "CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS'" in adql
    assert {"source_id", "ra", "dec", "pmra", "pmdec", "phot_g_mean_mag"} <= set(table.colnames)
    assert str(table["ra"].unit) == "deg" and str(table["pmra"].unit) == "mas / yr"
    assert table["source_id"].dtype == np.int64
    g = np.asarray(table["phot_g_mean_mag"])
    assert np.all(np.diff(g) >= 0), "brightest first"
    dist = np.hypot((np.asarray(table["ra"]) - t["ra_deg"]) * math.cos(math.radians(t["dec_deg"])),
                    np.asarray(table["dec"]) - t["dec_deg"])
    assert 20 < len(table) and np.all(dist <= 1.0 / 60 + 1e-3)


def test_gaia_errors_are_one_line_with_the_archive_reason(archive):
    archive.fail_with = (500, "Error while executing the query: database is being upgraded")
    try:
        with pytest.raises(GaiaUnavailable) as err:
            query_gaia_dr3(268.5, -29.5, 0.01, archive.url)
    finally:
        archive.fail_with = None
    text = str(err.value)
    assert "\n" not in text and "database is being upgraded" in text and "HTTP 500" in text
    with pytest.raises(GaiaUnavailable, match="unreachable"):
        query_gaia_dr3(268.5, -29.5, 0.01, "http://127.0.0.1:9/tap-server/tap", timeout_s=5)


def test_gaia_is_cached_with_its_cone_reused_offline_and_moved_by_proper_motion(sky, archive, tmp_path):
    t = _target(sky)
    ra, dec = float(t["ra_deg"]), float(t["dec_deg"])
    cache = tmp_path / "gaia_dr3.ecsv"
    stars, note = gaia_stars(ra, dec, 2.0 / 60, cache, archive.url, epoch_jyear=EPOCH)
    assert "queried" in note and cache.is_file()
    meta = Table.read(cache, format="ascii.ecsv").meta
    assert meta["centre_ra_deg"] == pytest.approx(ra) and meta["radius_deg"] == pytest.approx(2.0 / 60)
    assert "gaiadr3.gaia_source" in meta["query"]
    # positions at the frame's epoch are the generator's (the archive's are at J2016.0)
    tree_d = [np.min(np.hypot((s_ra - stars.ra_deg) * math.cos(math.radians(dec)), s_dec - stars.dec_deg)) * 3.6e6
              for s_ra, s_dec in zip(sky["ra_deg"][:50], sky["dec_deg"][:50])
              if abs(s_ra - ra) < 1 / 60 and abs(s_dec - dec) < 1 / 60]
    assert tree_d and np.median(tree_d) < 1.0, "mas"
    # offline: the archive fails, a cone inside the cached one comes from the cache
    archive.fail_with = (503, "Service unavailable")
    asked = len(archive.queries)
    try:
        again, note2 = gaia_stars(ra + 0.2 / 60, dec, 1.0 / 60, cache, archive.url, epoch_jyear=EPOCH)
        assert "cache" in note2 and len(again) == len(stars) and len(archive.queries) == asked
        with pytest.raises(GaiaUnavailable):   # a cone the cache does not cover is queried
            gaia_stars(ra + 3.0 / 60, dec, 1.0 / 60, cache, archive.url, epoch_jyear=EPOCH)
    finally:
        archive.fail_with = None


def _request(sky, mode, header, tmp_path, url, **kw) -> AstrometryRequest:
    t = _target(sky)
    return AstrometryRequest(mode=mode, header_wcs=header, wcs_status=kw.pop("status", 0), scale_arcsec=SCALE,
                             shape=SHAPE, target_ra_deg=float(t["ra_deg"]), target_dec_deg=float(t["dec_deg"]),
                             epoch_jyear=EPOCH, gaia_cache=tmp_path / "gaia.ecsv", gaia_tap_url=url, **kw)


def test_the_astrometry_key_chooses_the_route_and_auto_falls_back_with_one_warning(sky, archive, tmp_path):
    t = _target(sky)
    true = _wcs(float(t["ra_deg"]), float(t["dec_deg"]))
    header = _offset(true, 2.0, 120.0, 0.05)
    det = _detections(sky, true)
    sol, stars, notes, warned = reference_astrometry(_request(sky, "auto", header, tmp_path, archive.url), det, 5.0)
    assert sol.refined and stars.source == "Gaia DR3" and not warned
    assert any("refined against Gaia DR3" in n and "rms" in n for n in notes)
    archive.fail_with = (500, "down for maintenance")
    try:
        sol, _, notes, warned = reference_astrometry(_request(sky, "auto", header, tmp_path / "x", archive.url),
                                                     det, 5.0, header_scatter=lambda: 1.3)
        assert not sol.refined and sol.uncertainty_arcsec == pytest.approx(1.3)
        assert len(warned) == 1 and "down for maintenance" in warned[0]
        with pytest.raises(AstrometryError, match="'gaia'"):
            reference_astrometry(_request(sky, "gaia", header, tmp_path / "y", archive.url), det, 5.0)
        # a pointing (WCSERR) is never used as a solution
        with pytest.raises(AstrometryError, match="WCSERR=4"):
            reference_astrometry(_request(sky, "auto", header, tmp_path / "z", archive.url, status=4), det, 5.0)
    finally:
        archive.fail_with = None
    sol, _, _, warned = reference_astrometry(_request(sky, "header", header, tmp_path, archive.url), det, 5.0)
    assert not sol.refined and not warned
    with pytest.raises(AstrometryError, match="no WCS"):
        reference_astrometry(_request(sky, "header", None, tmp_path, archive.url), det, 5.0)
