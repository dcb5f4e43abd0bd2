"""Tests of luigi_phot.synthetic: the synthetic dataset generator and the
real-frame series. Every fact is checked against the files on disk, read back
with astropy, and against the truth tables the generator writes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import AltAz, EarthLocation, SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.utils import iers
from astropy.wcs import WCS

from luigi_phot.config import load_reduction_config, parse_dec, parse_ra
from luigi_phot.synthetic import (
    BPM_BAD_PIXEL,
    BPM_COSMIC_RAY,
    BPM_SATURATED,
    CONFIG_NAME,
    LCO_SITES,
    STARS_NAME,
    TRUTH_NAME,
    MoffatPSF,
    SyntheticConfig,
    airmass_at,
    generate_dataset,
    main,
    paczynski_magnification,
    render_moffat_stars,
    series_from_real_frame,
    star_fluxes_e_per_s,
)

REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
if not REAL_DIR.is_dir():
    REAL_DIR = Path("/work/shared/data/real")
ISAAC = REAL_DIR / "isaac_psrj1740.fits"
EYUMA = REAL_DIR / "eyuma_thumbnail.fit.gz"
EYUMA_WCS = REAL_DIR / "eyuma_thumbnail_wcs.fit"

# A small field for tests that need files but not a full frame.
SMALL = dict(shape=(256, 256), n_frames=4, n_nights=2, n_stars=300, bad_column=60)


def _sci(path: Path):
    with fits.open(path) as hdul:
        return (hdul["SCI"].data.astype(np.float64), hdul["SCI"].header.copy(),
                hdul["BPM"].data.copy(), hdul["ERR"].data.astype(np.float64))


def _subpixel_aperture_mask(shape, x, y, radius, oversample=8):
    """Fraction of each pixel inside a circle (pixel centres at integer coordinates)."""
    ny, nx = shape
    offs = (np.arange(oversample) + 0.5) / oversample - 0.5
    yy, xx = np.mgrid[0:ny, 0:nx]
    frac = np.zeros(shape)
    for oy in offs:
        for ox in offs:
            frac += np.hypot(xx + ox - x, yy + oy - y) < radius
    return frac / oversample ** 2


# --------------------------------------------------------------------------
# Fixtures: datasets generated once per module
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_set(tmp_path_factory):
    """The default configuration: 20 frames of 1024x1024 with 3000 stars."""
    red_dir = tmp_path_factory.mktemp("default") / "red"
    t0 = time.perf_counter()
    ds = generate_dataset(red_dir, SyntheticConfig())
    ds.wall_s = time.perf_counter() - t0
    return ds


@pytest.fixture(scope="module")
def sparse_set(tmp_path_factory):
    """Only the target on a flat sky: no other stars, cosmics, hot pixels, bad column or gradient."""
    cfg = SyntheticConfig(shape=(192, 192), n_frames=4, n_nights=2, n_stars=0, n_variables=0,
                          n_saturated=0, n_hot_pixels=0, cosmic_rays_per_mpix_per_s=0.0,
                          bad_column=None, sky_gradient_frac=0.0, target_mag_baseline=15.0,
                          seeing_arcsec=(2.0, 3.2), seed=21)
    return generate_dataset(tmp_path_factory.mktemp("sparse") / "red", cfg)


@pytest.fixture(scope="module")
def mixed_set(tmp_path_factory):
    cfg = SyntheticConfig(compress="mixed", seed=5, **SMALL)
    return generate_dataset(tmp_path_factory.mktemp("mixed") / "red", cfg)


# --------------------------------------------------------------------------
# Files and layout
# --------------------------------------------------------------------------


def test_red_dir_holds_only_frames_truth_and_config(default_set):
    names = sorted(p.name for p in default_set.red_dir.iterdir())
    frames = sorted(p.name for p in default_set.frame_paths)
    assert names == sorted(frames + [TRUTH_NAME, STARS_NAME, CONFIG_NAME])
    assert len(frames) == 20
    for name in frames:
        # LCO naming: site+telescope-camera-DAYOBS-frame-e91
        assert name.startswith("lsc1m005-fa15-2026")
        assert name.endswith("-e91.fits")


def test_fz_and_plain_frames_have_the_same_layout(mixed_set):
    kinds = {p.name.endswith(".fits.fz") for p in mixed_set.frame_paths}
    assert kinds == {True, False}, "compress='mixed' must write both kinds"
    layouts = set()
    for path in mixed_set.frame_paths:
        with fits.open(path) as hdul:
            assert hdul[0].data is None and hdul[0].header["NAXIS"] == 0
            assert [h.name for h in hdul] == ["PRIMARY", "SCI", "BPM", "ERR"]
            cls = fits.CompImageHDU if path.name.endswith(".fz") else fits.ImageHDU
            assert all(isinstance(h, cls) for h in hdul[1:])
            assert hdul["SCI"].data.dtype.newbyteorder("=") == np.float32
            assert hdul["BPM"].data.dtype == np.uint8
            assert hdul["ERR"].data.dtype.newbyteorder("=") == np.float32
            assert hdul["SCI"].data.shape == hdul["BPM"].data.shape == hdul["ERR"].data.shape == (256, 256)
            assert hdul["SCI"].header["EXTNAME"] == "SCI"
            assert hdul["SCI"].header["BUNIT"] == "electrons"
            layouts.add(tuple(sorted(k for k in hdul["SCI"].header if k[:1] not in ("Z",)
                                     and k not in ("XTENSION", "PCOUNT", "GCOUNT", "BITPIX", "NAXIS",
                                                   "NAXIS1", "NAXIS2"))))
            sci = hdul["SCI"].data.astype(float)
            err = hdul["ERR"].data.astype(float)
            rn = hdul["SCI"].header["RDNOISE"]
            # ERR is the per-pixel noise in electrons; fz quantisation is a small fraction of it
            expected = np.sqrt(np.maximum(sci, 0) + rn ** 2)
            assert np.median(np.abs(err - expected) / expected) < 0.02
    assert len(layouts) == 1, "fz and plain SCI headers must carry the same keywords"


def test_header_keys_agree_with_the_truth_table(default_set):
    truth = default_set.truth
    site = LCO_SITES["lsc"]
    for row, path in zip(truth, default_set.frame_paths):
        assert row["image"] == path.name
        _, h, _, _ = _sci(path)
        for key in ("DATE-OBS", "MJD-OBS", "EXPTIME", "FILTER", "AIRMASS", "GAIN", "RDNOISE", "SATURATE",
                    "PIXSCALE", "RA", "DEC", "LATITUDE", "LONGITUD", "HEIGHT", "SITEID", "TELESCOP",
                    "INSTRUME", "OBJECT", "BUNIT", "RLEVEL", "CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2",
                    "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2"):
            assert key in h, f"{path.name}: {key} missing"
        assert abs(h["MJD-OBS"] + h["EXPTIME"] / 2 / 86400 - row["mjd_mid"]) < 1e-8
        assert abs(h["MJD-OBS"] - row["mjd_start"]) < 1e-8
        # DATE-OBS (ISO with milliseconds) is the same instant as MJD-OBS
        assert len(h["DATE-OBS"].split(".")[-1]) == 3
        assert abs(Time(h["DATE-OBS"], scale="utc").mjd - h["MJD-OBS"]) * 86400 < 1e-3
        assert h["EXPTIME"] == row["exptime_s"]
        assert h["AIRMASS"] == pytest.approx(row["airmass"], abs=1e-4)
        assert h["BUNIT"] == "electrons" and h["RLEVEL"] == 91
        assert h["OBJECT"] == "SYN-2026-BLG-0001" and h["FILTER"] == "ip"
        assert (h["LATITUDE"], h["LONGITUD"], h["HEIGHT"]) == (site.latitude_deg, site.longitude_deg,
                                                               site.height_m)
        assert h["SITEID"] == "lsc"
        # the pointing RA/DEC are sexagesimal strings close to the field centre
        assert abs(parse_ra(h["RA"]) - 268.5) * math.cos(math.radians(29.5)) * 3600 < 60
        assert abs(parse_dec(h["DEC"]) + 29.5) * 3600 < 60


def test_same_seed_same_pixels_other_seed_other_pixels(tmp_path):
    cfg = SyntheticConfig(compress="mixed", seed=11, **SMALL)
    a = generate_dataset(tmp_path / "a", cfg)
    b = generate_dataset(tmp_path / "b", cfg)
    c = generate_dataset(tmp_path / "c", dataclasses.replace(cfg, seed=12))
    assert [p.name for p in a.frame_paths] == [p.name for p in b.frame_paths]
    for pa, pb in zip(a.frame_paths, b.frame_paths):
        sa, ha, ba, ea = _sci(pa)
        sb, hb, bb, eb = _sci(pb)
        assert np.array_equal(sa, sb) and np.array_equal(ba, bb) and np.array_equal(ea, eb)
        assert ha["MJD-OBS"] == hb["MJD-OBS"] and ha["CRVAL1"] == hb["CRVAL1"]
    first_c, _, _, _ = _sci(c.frame_paths[0])
    first_a, _, _, _ = _sci(a.frame_paths[0])
    assert not np.array_equal(first_a, first_c)
    assert not np.array_equal(np.asarray(a.truth["mjd_start"]), np.asarray(c.truth["mjd_start"]))


def test_refuses_a_non_empty_red_dir_and_overwrite_removes_only_its_own_files(tmp_path):
    cfg = SyntheticConfig(**{**SMALL, "n_frames": 2})
    generate_dataset(tmp_path, cfg)
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path, cfg)
    (tmp_path / "notes.txt").write_text("keep me")
    second = generate_dataset(tmp_path, dataclasses.replace(cfg, seed=2), overwrite=True)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {p.name for p in second.frame_paths} | {TRUTH_NAME, STARS_NAME, CONFIG_NAME, "notes.txt"}


# --------------------------------------------------------------------------
# Physics of the frames
# --------------------------------------------------------------------------


def test_target_aperture_sum_matches_true_flux_times_transmission(sparse_set):
    truth = sparse_set.truth
    for row, path in zip(truth, sparse_set.frame_paths):
        sci, h, bpm, err = _sci(path)
        x, y = row["target_x_pix"], row["target_y_pix"]
        radius = 6.0 * row["fwhm_pix"]
        w = _subpixel_aperture_mask(sci.shape, x, y, radius)
        assert not (bpm[w > 0] & BPM_SATURATED).any()
        measured = np.sum(w * (sci - row["sky_e_per_pix"]))
        noise = math.sqrt(np.sum(w * err ** 2))
        psf = MoffatPSF(row["fwhm_pix"], row["moffat_beta"], row["ellipticity"])
        expected = (row["target_flux_e_per_s"] * row["transmission"] * row["exptime_s"]
                    * float(psf.enclosed_fraction(radius)))
        assert abs(measured - expected) < 4 * noise + 0.005 * expected, (path.name, measured, expected, noise)
        # and the same number in a data-unit mistake (ADU = e-/GAIN) would be far off
        assert abs(measured / h["GAIN"] - expected) > 10 * noise


def test_target_profile_has_the_true_fwhm_and_beta(sparse_set):
    """Enclosed flux within 0.5, 1 and 2 FWHM follows the Moffat of the truth table."""
    for row, path in zip(sparse_set.truth, sparse_set.frame_paths):
        sci, _, _, _ = _sci(path)
        x, y = row["target_x_pix"], row["target_y_pix"]
        total = row["target_flux_e_per_s"] * row["transmission"] * row["exptime_s"]
        psf = MoffatPSF(row["fwhm_pix"], row["moffat_beta"], row["ellipticity"])
        for k in (0.5, 1.0, 2.0):
            r = k * row["fwhm_pix"]
            frac = np.sum(_subpixel_aperture_mask(sci.shape, x, y, r) * (sci - row["sky_e_per_pix"])) / total
            assert frac == pytest.approx(float(psf.enclosed_fraction(r)), abs=0.015), (path.name, k)


def test_rendered_star_conserves_flux_and_centroid():
    rng = np.random.default_rng(3)
    psf = MoffatPSF(3.0, 2.8, 0.08, 40.0)
    for _ in range(10):
        x, y = 40 + rng.random(), 40 + rng.random()
        img = render_moffat_stars(np.zeros((81, 81)), x, y, 1e5, psf, floor_e=1e-4, max_radius_pix=40)
        yy, xx = np.mgrid[0:81, 0:81]
        assert img.sum() == pytest.approx(1e5 * float(psf.enclosed_fraction(40.0)), rel=2e-3)
        assert (img * xx).sum() / img.sum() == pytest.approx(x, abs=2e-3)
        assert (img * yy).sum() / img.sum() == pytest.approx(y, abs=2e-3)


def test_header_wcs_is_close_to_but_not_exactly_right(default_set):
    truth = default_set.truth
    meta = truth.meta
    error_arcsec = meta["generator_parameters"]["wcs_error_arcsec"]
    scale = meta["generator_parameters"]["pixel_scale_arcsec"]
    offsets = []
    for row, path in zip(truth, default_set.frame_paths):
        _, h, _, _ = _sci(path)
        x, y = WCS(h).all_world2pix([[meta["target_ra_deg"], meta["target_dec_deg"]]], 0)[0]
        offsets.append(math.hypot(x - row["target_x_pix"], y - row["target_y_pix"]) * scale)
    offsets = np.array(offsets)
    assert offsets.max() < 1.2 * error_arcsec
    assert offsets.min() > 0.3 * error_arcsec
    assert np.allclose(offsets, truth["header_wcs_error_arcsec"], atol=1e-6)


def test_pointing_jitter_and_rotation_move_the_target(default_set):
    t = default_set.truth
    jitter = t.meta["generator_parameters"]["jitter_pix"]
    assert np.ptp(t["target_x_pix"]) > jitter / 2 and np.ptp(t["target_y_pix"]) > jitter / 2
    assert np.all(np.abs(t["offset_x_pix"]) <= jitter) and np.all(np.abs(t["offset_y_pix"]) <= jitter)
    assert np.ptp(t["rotation_deg"]) > 0.1


def test_saturation_is_clipped_and_flagged(default_set):
    meta = default_set.truth.meta
    stars = default_set.stars
    saturating = stars[stars["is_saturating"]]
    assert len(saturating) == meta["generator_parameters"]["n_saturated"]
    bad_column = meta["generator_parameters"]["bad_column"]
    for path in default_set.frame_paths[:6]:
        sci, h, bpm, _ = _sci(path)
        sat = h["SATURATE"]
        good = np.ones(sci.shape, bool)
        good[:, bad_column] = False
        flagged = (bpm & BPM_SATURATED).astype(bool) & good
        assert flagged.any()
        assert np.all(sci[flagged] == np.float32(sat))
        assert sci[good].max() <= sat
        assert not np.any(sci[good & ~flagged] >= sat)
        # every saturating star is saturated at its position (header WCS is good to ~1", the core is larger)
        px, py = WCS(h).all_world2pix(np.c_[saturating["ra_deg"], saturating["dec_deg"]], 0).T
        on_chip = (px > 2) & (px < sci.shape[1] - 3) & (py > 2) & (py < sci.shape[0] - 3)
        for x, y in zip(px[on_chip], py[on_chip]):
            assert bpm[int(round(y)), int(round(x))] & BPM_SATURATED


def test_bad_column_and_hot_pixels_are_flagged(default_set):
    bad_column = default_set.truth.meta["generator_parameters"]["bad_column"]
    sci, _, bpm, _ = _sci(default_set.frame_paths[0])
    assert np.all(bpm[:, bad_column] & BPM_BAD_PIXEL)
    value = default_set.truth.meta["generator_parameters"]["bad_column_value_e"]
    assert np.median(sci[:, bad_column]) == pytest.approx(value, rel=0.01)
    n_hot = default_set.truth.meta["generator_parameters"]["n_hot_pixels"]
    others = (bpm & BPM_BAD_PIXEL).astype(bool)
    others[:, bad_column] = False
    assert 0 < others.sum() <= n_hot


def test_cosmic_rays_are_flagged_only_when_asked(tmp_path):
    base = SyntheticConfig(cosmic_rays_per_mpix_per_s=5.0, **{**SMALL, "n_frames": 2})
    marked = generate_dataset(tmp_path / "m", dataclasses.replace(base, bpm_marks_cosmics=True))
    plain = generate_dataset(tmp_path / "p", base)
    for pm, pp, row in zip(marked.frame_paths, plain.frame_paths, marked.truth):
        sm, _, bm, _ = _sci(pm)
        sp, _, bp, _ = _sci(pp)
        assert np.array_equal(sm, sp), "flagging must not change the pixels"
        assert not (bp & BPM_COSMIC_RAY).any()
        cr = (bm & BPM_COSMIC_RAY).astype(bool)
        n_cr = row["n_cosmic_rays"]
        assert n_cr > 10
        assert n_cr <= cr.sum() <= 11 * n_cr
        # sharp: most cosmic-ray pixels stand far above the sky
        assert np.mean(sm[cr] - row["sky_e_per_pix"] > 150) > 0.9


def test_a_column_across_the_target_changes_only_that_column(tmp_path):
    """target_column_fraction adds a dead BPM-bad column that the target's jitter carries
    across in about that fraction of frames, and nothing else in the dataset changes."""
    base = SyntheticConfig(**{**SMALL, "n_frames": 12, "n_nights": 3})
    plain = generate_dataset(tmp_path / "p", base)
    with_col = generate_dataset(tmp_path / "c", dataclasses.replace(base, target_column_fraction=0.5))
    x_col = with_col.truth.meta["target_column_x"]
    offset = np.asarray(with_col.truth["target_column_offset_pix"])
    assert np.allclose(offset, np.asarray(with_col.truth["target_x_pix"]) - x_col)
    assert 0.35 <= np.mean(np.abs(offset) <= 2.0 / base.pixel_scale_arcsec) <= 0.65
    assert "target_column_offset_pix" not in plain.truth.colnames
    for pc, pp in zip(with_col.frame_paths, plain.frame_paths):
        sc, _, bc, ec = _sci(pc)
        sp, _, bp, ep = _sci(pp)
        assert np.all(sc[:, x_col] == 0.0) and np.all(bc[:, x_col] & BPM_BAD_PIXEL)
        others = np.ones(sc.shape[1], dtype=bool)
        others[x_col] = False
        assert np.array_equal(sc[:, others], sp[:, others]) and np.array_equal(bc[:, others], bp[:, others])


# --------------------------------------------------------------------------
# The sky, the event and the schedule
# --------------------------------------------------------------------------


def test_luminosity_function_slope_and_faint_majority(default_set):
    stars = default_set.stars
    field = ~(stars["is_target"] | stars["is_saturating"] | stars["is_neighbour"])
    mags = np.asarray(stars["mag"][field])
    params = default_set.truth.meta["generator_parameters"]
    counts, edges = np.histogram(mags, bins=np.arange(params["mag_bright"], params["mag_faint"] + 0.01, 0.5))
    centres = 0.5 * (edges[1:] + edges[:-1])
    use = counts > 0
    slope = np.polyfit(centres[use], np.log10(counts[use]), 1, w=np.sqrt(counts[use]))[0]
    assert slope == pytest.approx(params["luminosity_slope"], abs=0.05)
    assert np.mean(mags > params["mag_faint"] - 1.5) > 0.5


def test_event_brightens_by_more_than_a_magnitude_and_follows_paczynski(default_set):
    t = default_set.truth
    flux = np.asarray(t["target_flux_e_per_s"])
    assert 2.5 * np.log10(flux.max() / flux.min()) > 1.0
    ev = t.meta["event"]
    amp = paczynski_magnification(np.asarray(t["mjd_mid"]), ev["t0_mjd"], ev["tE_days"], ev["u0"])
    assert np.allclose(t["target_magnification"], amp)
    assert np.allclose(flux, ev["source_flux_e_per_s"] * amp + ev["blend_flux_e_per_s"])
    assert ev["blend_flux_e_per_s"] / (ev["source_flux_e_per_s"] + ev["blend_flux_e_per_s"]) == \
        pytest.approx(ev["blend_fraction"])
    # the star table gives the same target flux at every epoch
    for row in t[:3]:
        f = star_fluxes_e_per_s(default_set.stars, row["mjd_mid"])
        assert f[np.asarray(default_set.stars["is_target"])][0] == pytest.approx(row["target_flux_e_per_s"])


def test_variables_vary_and_constant_stars_do_not(default_set):
    stars = default_set.stars
    times = np.asarray(default_set.truth["mjd_mid"])
    fluxes = np.array([star_fluxes_e_per_s(stars, t) for t in times])
    var = np.asarray(stars["is_variable"])
    const = ~var & ~np.asarray(stars["is_target"])
    assert var.sum() == default_set.truth.meta["generator_parameters"]["n_variables"]
    assert np.all(np.ptp(fluxes[:, const], axis=0) == 0)
    dmag = 2.5 * np.log10(fluxes[:, var].max(axis=0) / fluxes[:, var].min(axis=0))
    assert np.all(dmag <= 0.5 + 1e-9) and np.any(dmag > 0.02)


def test_target_isolation_and_neighbour(tmp_path):
    cfg = SyntheticConfig(shape=(256, 256), n_frames=1, n_nights=1, n_stars=6000, bad_column=None,
                          target_isolation_arcsec=5.0, target_neighbour=(2.5, 0.7), seed=4)
    ds = generate_dataset(tmp_path, cfg)
    s = ds.stars
    target = s[s["is_target"]][0]
    sep = SkyCoord(s["ra_deg"], s["dec_deg"], unit="deg").separation(
        SkyCoord(target["ra_deg"], target["dec_deg"], unit="deg")).arcsec
    neighbour = np.asarray(s["is_neighbour"])
    assert neighbour.sum() == 1
    assert sep[neighbour][0] == pytest.approx(2.5, abs=0.01)
    assert s["mag"][neighbour][0] == pytest.approx(cfg.target_mag_baseline + 0.7)
    others = ~neighbour & ~np.asarray(s["is_target"])
    assert not np.any(others & (sep < 5.0) & (np.asarray(s["mag"]) < cfg.target_mag_baseline + 3))
    assert np.any(others & (sep < 5.0))  # fainter stars stay: crowding is not removed


def test_frames_are_at_night_with_gaps_and_the_right_airmass(default_set):
    t = default_set.truth
    site = LCO_SITES["lsc"]
    params = t.meta["generator_parameters"]
    start = np.asarray(t["mjd_start"])
    assert np.all(np.diff(start) * 86400 >= params["exptime_s"] + 28.0)
    days = set()
    for row, path in zip(t, default_set.frame_paths):
        _, h, _, _ = _sci(path)
        days.add(h["DAY-OBS"])
        day = dt.datetime.strptime(h["DAY-OBS"], "%Y%m%d")
        midnight = Time(day + dt.timedelta(days=1)).mjd - site.longitude_deg / 360.0
        assert abs(row["mjd_mid"] - midnight) * 24 <= params["night_hours"] / 2 + 0.5
        assert 1.0 <= row["airmass"] <= params["airmass_max"] + 0.01
        assert row["transmission"] == pytest.approx(
            10 ** (-0.4 * (params["extinction_mag_per_airmass"] * row["airmass"] + row["cloud_mag"])))
    assert len(days) == params["n_nights"]
    assert np.any(t["cloud_mag"] > 0) and np.all(t["cloud_mag"] <= params["cloud_depth_mag_max"])


def test_airmass_agrees_with_astropy_altaz():
    site = LCO_SITES["lsc"]
    loc = EarthLocation(lat=site.latitude_deg, lon=site.longitude_deg, height=site.height_m)
    times = Time(2458300.5 + np.linspace(0.0, 0.4, 9), format="jd", scale="utc")  # 2018, inside IERS-B
    coord = SkyCoord(268.5, -29.5, unit="deg")
    with iers.conf.set_temp("auto_download", False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alt = coord.transform_to(AltAz(obstime=times, location=loc)).alt.deg
    ours = airmass_at(times.mjd, 268.5, -29.5, site)
    up = alt > 35
    assert up.sum() >= 3
    assert np.allclose(ours[up], 1 / np.sin(np.radians(alt[up])), rtol=0.01)


def test_reduction_config_parses_and_points_at_the_true_target(default_set):
    cfg = load_reduction_config(default_set.config_path, check_tom_file=False)
    meta = default_set.truth.meta
    assert cfg.target.name == "SYN-2026-BLG-0001"
    assert cfg.tom.upload is False and cfg.tom.data_label == "SYN-2026-BLG-0001"
    assert cfg.photometry.aperture_arcsec == 2.0
    dra = (cfg.target.ra_deg - meta["target_ra_deg"]) * math.cos(math.radians(meta["target_dec_deg"]))
    assert math.hypot(dra, cfg.target.dec_deg - meta["target_dec_deg"]) * 3600 < 0.01
    star = default_set.stars[default_set.stars["is_target"]][0]
    assert star["ra_deg"] == pytest.approx(meta["target_ra_deg"])


def test_truth_meta_describes_the_conventions(default_set):
    meta = default_set.truth.meta
    assert "0-based" in meta["pixel_convention"]
    assert meta["seed"] == 1
    assert set(meta["generator_parameters"]) == {f.name for f in dataclasses.fields(SyntheticConfig)}
    reread = Table.read(default_set.truth_path, format="ascii.ecsv")
    assert reread["target_flux_e_per_s"].unit == "electron / s"
    assert list(reread["image"]) == [p.name for p in default_set.frame_paths]


def test_command_line_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["--out", str(out), "--size", "160x128", "--n-frames", "3", "--n-stars", "200",
               "--seed", "9", "--compress", "all", "--set", "n_variables=1", "--target-neighbour", "3", "1"])
    assert rc == 0
    ds_truth = Table.read(out / TRUTH_NAME, format="ascii.ecsv")
    params = ds_truth.meta["generator_parameters"]
    assert params["shape"] == [128, 160] and params["seed"] == 9 and params["n_variables"] == 1
    assert params["target_neighbour"] == [3.0, 1.0]
    assert 0 <= params["bad_column"] < 160
    assert len(list(out.glob("*.fits.fz"))) == 3
    assert main(["--out", str(out), "--size", "128"]) == 2  # not empty: refused
    assert "not empty" in capsys.readouterr().err


def test_timing_of_the_default_set(default_set, capsys):
    """Printed, not asserted (whatever -q or -s): the default set's generation time."""
    with capsys.disabled():
        print(f"\n[timing] default set, 20 frames 1024x1024, 3000 stars: {default_set.wall_s:.2f} s "
              f"(pixels {default_set.render_s:.2f} s, the rest planning and writing files)")
    assert default_set.render_s <= default_set.elapsed_s


# --------------------------------------------------------------------------
# A series from a real frame
# --------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cards(header):
    """Keyword cards (blank padding cards, which astropy may trim, left out)."""
    return [(c.keyword, str(c.value)) for c in header.cards if c.keyword]


@pytest.mark.parametrize("real, wcs_path", [(ISAAC, None), (EYUMA, EYUMA_WCS)], ids=["isaac", "eyuma"])
def test_real_frame_series_keeps_the_header_and_injects_the_truth(tmp_path, real, wcs_path):
    if not real.exists():
        pytest.skip(f"{real} not available")
    before = _sha256(real)
    ds = series_from_real_frame(real, tmp_path, n_frames=6, seed=3, wcs_path=wcs_path)
    assert _sha256(real) == before == ds.truth.meta["source_sha256"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(real) as hdul:
            h0 = hdul[0].header.copy()
            d0 = hdul[0].data.astype(float)
    assert "GAIN" not in h0 and "RDNOISE" not in h0
    changed = {"DATE-OBS", "MJD-OBS", "JD-OBS", "CRPIX1", "CRPIX2"}
    truth = ds.truth
    measured, expected = [], []
    for row, path in zip(truth, ds.frame_paths):
        assert path.name.endswith(real.name[len(real.name.split(".")[0]):])  # same extension
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path) as hdul:
                h = hdul[0].header.copy()
                d = hdul[0].data.astype(float)
                assert hdul[0].data.dtype == fits.getdata(real).dtype
        assert [k for k, _ in _cards(h)] == [k for k, _ in _cards(h0)], "keywords added or removed"
        for (k, v), (_, v0) in zip(_cards(h), _cards(h0)):
            if k not in changed:
                assert v == v0, k
        assert "GAIN" not in h and "RDNOISE" not in h
        assert h["MJD-OBS"] == pytest.approx(row["mjd_start"], abs=1e-9)
        assert abs(Time(h["DATE-OBS"], scale="utc").mjd - h["MJD-OBS"]) * 86400 < 1e-3
        assert h["CRPIX1"] == pytest.approx(h0["CRPIX1"] + row["shift_x_pix"])
        assert h["CRPIX2"] == pytest.approx(h0["CRPIX2"] + row["shift_y_pix"])
        # subtract the input, shifted the same way: what is left is the injected star and noise
        dx, dy = int(row["shift_x_pix"]), int(row["shift_y_pix"])
        shifted = np.roll(d0, (dy, dx), axis=(0, 1))
        x, y = row["target_x_pix"], row["target_y_pix"]
        radius = max(5.0 * row["fwhm_pix"], 4.0)
        w = _subpixel_aperture_mask(d.shape, x, y, radius)
        residual = np.sum(w * (d - shifted))
        psf = MoffatPSF(row["fwhm_pix"], row["moffat_beta"])
        exp = row["target_counts"] * float(psf.enclosed_fraction(radius))
        noise = row["noise_sigma"] * math.sqrt(np.sum(w)) + math.sqrt(np.sum(w) / 12)
        assert abs(residual - exp) < 5 * noise, (path.name, residual, exp, noise)
        measured.append(residual)
        expected.append(exp)
    # the measured light curve follows the injected one
    assert np.corrcoef(measured, expected)[0, 1] > 0.95
    assert np.ptp(truth["target_magnification"]) > 0.5
    cfg = load_reduction_config(ds.config_path, check_tom_file=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the real headers' own quirks
        right = WCS(fits.getheader(wcs_path) if wcs_path else h0, naxis=2)
        stale = WCS(h0, naxis=2)
    x0, y0 = truth.meta["injected_star_xy_in_input_pix"]
    true_ra, true_dec = right.all_pix2world([[x0, y0]], 0)[0]
    assert math.hypot((cfg.target.ra_deg - true_ra) * math.cos(math.radians(true_dec)),
                      cfg.target.dec_deg - true_dec) * 3600 < 0.1
    if wcs_path is not None:
        # the frames keep the stale WCS; the configuration uses the correct one
        stale_ra, stale_dec = stale.all_pix2world([[x0, y0]], 0)[0]
        assert math.hypot((stale_ra - true_ra) * math.cos(math.radians(true_dec)), stale_dec - true_dec) > 0.1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert fits.getheader(ds.frame_paths[0])["CRVAL1"] == h0["CRVAL1"]
