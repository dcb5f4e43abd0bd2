"""photometry/lightcurve.py on small in-memory tables: measurement files written and
read back (every column type, odd frame names), rejection records, product names,
the identification check, and build_lightcurve on a catalogue of 60 stars measured on
ten frames of known transparency, a variable target and a rejected frame."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from luigi_phot.names import UnsafeName
from luigi_phot.photometry import flags as F
from luigi_phot.photometry.catalogue import Catalogue
from luigi_phot.photometry.lightcurve import (IdentificationError, MeasurementRecord, build_lightcurve,
                                              check_target_identification, product_names, read_measurement,
                                              write_measurement, write_rejection)
from luigi_phot.photometry.psf import MoffatPSF

CTIO = {"SITELAT": -30.1673, "SITELON": -70.8049, "SITEALT": 2198.0}


def test_a_measurement_file_keeps_every_column_type_and_the_frame_name(tmp_path):
    rng = np.random.default_rng(1)
    columns = {"x": rng.uniform(0, 100, 7).astype(np.float32), "flux": rng.normal(1e4, 10, 7),
               "flags": np.array([0, 1, 2, 512, 0, 32, 4], dtype=np.int16),
               "n_sky": rng.integers(0, 400, 7).astype(np.int32), "id": np.arange(7, dtype=np.int64)}
    name = "lsc1m005-fa15-20260101-0001-e91 [ü].fits.fz"
    path = tmp_path / "m.fits"
    write_measurement(path, columns, {"IMAGE": (name, "frame"), "EXPTIME": (60.0, "[s]"), "FWHMAS": float("nan")})
    rec = read_measurement(path, columns=tuple(columns) + ("missing",))
    assert rec.image == name and rec.rejected is None
    assert set(rec.columns) == set(columns)
    for key, values in columns.items():
        assert rec.columns[key].dtype.newbyteorder("=") == values.dtype
        assert np.array_equal(rec.columns[key], values)
    assert rec.header["EXPTIME"] == 60.0 and rec.header["FWHMAS"] == "NaN"


def test_a_rejection_record_reads_back_as_rejected(tmp_path):
    path = tmp_path / "r.fits"
    write_rejection(path, "frame-1.fits", "alignment failed: too few stars", mjd_mid=61300.25)
    rec = read_measurement(path)
    assert rec.columns is None and rec.image == "frame-1.fits"
    assert rec.rejected == "alignment failed: too few stars" and rec.header["MJDMID"] == 61300.25


def test_product_names_are_safe_tokens():
    names = product_names("OGLE-2026-BLG-0042", "ip")
    assert names["lc_ecsv"] == "OGLE-2026-BLG-0042_ip_lc.ecsv"
    assert names["all_stars"] == "photometry/OGLE-2026-BLG-0042_ip_all_stars.fits"
    rewritten = product_names("T1", "SDSS r'/2")
    assert "/" not in rewritten["lc_csv"] and "'" not in rewritten["lc_csv"] and rewritten["lc_csv"].startswith("T1_")
    with pytest.raises(UnsafeName):
        product_names("../etc/passwd", "ip")


def test_the_identification_check_counts_only_measured_points():
    lc = Table({"flags": [F.BLENDED_OR_ABSENT, F.BLENDED_OR_ABSENT, 0, F.FRAME_REJECTED | F.BLENDED_OR_ABSENT]})
    with pytest.raises(IdentificationError, match="2 of 3"):
        check_target_identification(lc, "T", "ip")
    check_target_identification(Table({"flags": [F.BLENDED_OR_ABSENT, 0, F.COSMIC_RAY]}), "T", "ip")


# --------------------------------------------------------------------------
# build_lightcurve on a small catalogue
# --------------------------------------------------------------------------

N_STARS, N_FRAMES, TARGET, REF = 60, 10, 4, 2
ZERO_POINT = 23.5   # catalogue magnitude of 1 e/s on the reference frame


def _catalogue(rng, with_magnitudes: bool) -> tuple[Catalogue, np.ndarray]:
    rate = 10 ** rng.uniform(1.5, 3.0, N_STARS)            # e/s on the reference frame
    stars = Table()
    stars["id"] = np.arange(N_STARS)
    stars["ra"] = 268.0 + rng.uniform(0, 0.05, N_STARS)
    stars["dec"] = -29.0 + rng.uniform(0, 0.05, N_STARS)
    stars["x_ref"] = rng.uniform(0, 500, N_STARS)
    stars["y_ref"] = rng.uniform(0, 400, N_STARS)
    stars["flux_ref"] = rate * 60.0
    stars["is_target"] = np.arange(N_STARS) == TARGET
    stars["detected"] = np.ones(N_STARS, dtype=bool)
    stars["saturated_ref"] = np.zeros(N_STARS, dtype=bool)
    stars["cat_mag"] = ZERO_POINT - 2.5 * np.log10(rate) if with_magnitudes else np.full(N_STARS, np.nan)
    cat = Catalogue(stars=stars, reference_image=f"frame-{REF:02d}.fits", shape=(400, 500), wcs_header=fits.Header(),
                    pixel_scale_arcsec=0.389, filter_name="ip", psf=MoffatPSF(3.0), exptime_s=60.0,
                    mjd_mid=61300.0 + REF / 24, sky_e=300.0, catalogue_id="test", key="test")
    return cat, rate


def _records(rng, rate):
    """Ten measured frames (transparency known, the target brightening) and one rejected."""
    transparency = np.exp(rng.normal(0.0, 0.2, N_FRAMES))
    transparency /= transparency[REF]
    variation = np.ones((N_FRAMES, N_STARS))
    variation[:, TARGET] = 1.0 + 1.5 * np.exp(-0.5 * ((np.arange(N_FRAMES) - 6) / 1.5) ** 2)
    records = []
    for f in range(N_FRAMES):
        exptime = 60.0 if f % 2 else 120.0
        expected = rate * variation[f] * transparency[f] * exptime
        err = np.sqrt(expected + 400.0)
        header = fits.Header({"EXPTIME": exptime, "MJDMID": 61300.0 + f / 24, "AIRMASS": 1.2, **CTIO})
        neighbour = np.zeros(N_STARS, np.float32)
        neighbour[TARGET] = 50.0 * transparency[f] * exptime          # 50 e-/s on the reference frame
        columns = {"x": np.zeros(N_STARS), "y": np.zeros(N_STARS), "flux": rng.normal(expected, err),
                   "flux_err": err, "sky": np.full(N_STARS, 300.0), "neighbour_flux": neighbour,
                   "flags": np.zeros(N_STARS, dtype=np.int16)}
        if f == 8:
            columns["flags"][TARGET] = F.COSMIC_RAY          # informative: kept everywhere
        if f == 9:
            columns["flags"][TARGET] = F.SATURATED           # severe: not for the TOM
        records.append(MeasurementRecord(f"frame-{f:02d}.fits", header, columns))
    rejected = fits.Header({"REJECT": "too few stars", "MJDMID": 61300.0 + 11 / 24})
    records.append(MeasurementRecord("frame-11.fits", rejected, None))
    return records, variation[:, TARGET]


@pytest.mark.parametrize("with_magnitudes", [False, True])
def test_build_lightcurve_puts_every_frame_on_the_reference_scale(with_magnitudes):
    rng = np.random.default_rng(4)
    cat, rate = _catalogue(rng, with_magnitudes)
    records, target_variation = _records(rng, rate)
    p = build_lightcurve(records, cat, "T-1", 268.02, -28.98, default_zero_point=25.0)
    lc = p.lightcurve
    assert len(lc) == N_FRAMES + 1 and np.all(np.diff(lc["mjd"]) > 0)
    measured = np.asarray(lc["flags"]) & F.FRAME_REJECTED == 0
    assert list(np.asarray(lc["image"])[~measured]) == ["frame-11.fits"]
    truth = rate[TARGET] * target_variation
    flux = np.asarray(lc["flux"])[measured]
    assert np.all(np.abs(flux / truth - 1) < 4 * np.asarray(lc["flux_err"])[measured] / truth + 0.003)
    zp = lc.meta["zero_point_ref"]
    assert zp == pytest.approx(ZERO_POINT if with_magnitudes else 25.0, abs=0.01)
    assert np.allclose(np.asarray(lc["mag"])[measured], zp - 2.5 * np.log10(flux))
    # BJD after MJD by the light time (minutes at most) plus TDB - UTC
    offset_s = (np.asarray(lc["bjd_tdb"]) - 2400000.5 - np.asarray(lc["mjd"])) * 86400
    assert np.all((offset_s > 69.184 - 500) & (offset_s < 69.184 + 500))
    # the TOM table: unflagged points and the informative flag, not the saturated one
    assert len(p.tom_csv) == N_FRAMES - 1
    assert list(p.rejected["image"]) == ["frame-11.fits"]
    assert p.flux.shape == (N_FRAMES, N_STARS)
    assert not p.stars["comparison"][TARGET]
    # the neighbours' light in the target's aperture, on the reference scale like its flux
    assert np.allclose(np.asarray(lc["neighbour_flux"])[measured], 50.0, rtol=0.02)
    # flags: 32-bit in the light curve (as ever), 16-bit in the all-stars file, every bit fits
    assert lc["flags"].dtype == np.int32 and p.flags.dtype.newbyteorder("=") == np.int16
    assert max(F.FLAGS) < 2 ** 15 and F.SEVERE < 2 ** 15


def test_no_usable_frame_says_why():
    rng = np.random.default_rng(5)
    cat, _ = _catalogue(rng, False)
    records = [MeasurementRecord(f"f{k}.fits", fits.Header({"REJECT": f"reason {k}"}), None) for k in range(3)]
    with pytest.raises(ValueError, match="no usable frame among the 3 frames: f0.fits: reason 0"):
        build_lightcurve(records, cat, "T-1", 268.0, -29.0, default_zero_point=25.0)
