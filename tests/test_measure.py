"""The per-frame stage as an ordered list of named steps (photometry/measure.py), called
directly on a small generated dataset: which steps run, what they report, and that an
unexpected error names the step and the frame; its typed result (photometry/frame_result.py:
a table with units and the frame's facts) and the measurement file it is written to."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits

from luigi_phot.config import load_reduction_config
from luigi_phot.photometry import measure
from luigi_phot.photometry.catalogue import build_catalogue
from luigi_phot.photometry.frame_result import STAR_COLUMNS, FrameFacts, RejectionFacts
from luigi_phot.photometry.frames import load_frame
from luigi_phot.photometry.lightcurve import read_measurement, write_measurement, write_rejection
from luigi_phot.photometry.measure import MEASURE_STEPS, FrameRejected, MeasureSettings, MeasureTuning, measure_frame
from luigi_phot.synthetic import SyntheticConfig, generate_dataset


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    red = tmp_path_factory.mktemp("measure_steps") / "rd"
    generate_dataset(red, SyntheticConfig(seed=21, n_frames=2, shape=(400, 400)))
    cfg = load_reduction_config(red / "reduction_config.yaml", check_tom_file=False)
    frames = sorted(red.glob("*.fits*"))
    cat = build_catalogue(load_frame(frames[0], cfg.camera), cfg.target.ra_deg, cfg.target.dec_deg,
                          cfg.photometry, key="steps")
    return cfg, cat, frames[1]


def test_every_step_runs_in_order_and_is_timed(small_dataset):
    cfg, cat, path = small_dataset
    seen = []
    m = measure_frame(load_frame(path, cfg.camera), cat, MeasureSettings.from_config(cfg.photometry),
                      progress=lambda fraction, message: seen.append(fraction))
    assert list(m.timings) == [s.name for s in MEASURE_STEPS]
    assert all(t >= 0 for t in m.timings.values())
    assert seen == sorted(seen) and len(seen) == sum(s.progress is not None for s in MEASURE_STEPS)
    assert m.facts.sky_estimator == "mean" and m.facts.neighbours_subtracted
    assert np.isfinite(m.stars["flux"][cat.target_index])


def test_plain_apertures_skip_the_model_steps(small_dataset):
    cfg, cat, path = small_dataset
    settings = dataclasses.replace(MeasureSettings.from_config(cfg.photometry), subtract_neighbours=False)
    m = measure_frame(load_frame(path, cfg.camera), cat, settings)
    assert "neighbours" not in m.timings and "variables" not in m.timings
    assert m.facts.sky_estimator == "median" and not m.facts.neighbours_subtracted
    assert not np.any(m.stars["neighbour_flux"])


def test_an_unexpected_error_names_the_step_and_the_frame(small_dataset, monkeypatch):
    cfg, cat, path = small_dataset

    def broken_fit(*args, **kwargs):
        raise ValueError("a bug in the PSF fit")

    monkeypatch.setattr(measure, "fit_psf", broken_fit)
    with pytest.raises(ValueError) as caught:
        measure_frame(load_frame(path, cfg.camera), cat, MeasureSettings.from_config(cfg.photometry))
    assert f"in step 'psf' of measuring {path.name}" in "\n".join(getattr(caught.value, "__notes__", []))


def test_the_tuning_reaches_the_steps(small_dataset):
    cfg, cat, path = small_dataset
    with pytest.raises(FrameRejected, match="too few stars for the PSF"):
        measure_frame(load_frame(path, cfg.camera), cat, MeasureSettings.from_config(cfg.photometry),
                      tuning=MeasureTuning(psf_min_stars=10_000))


# --- the typed result (photometry/frame_result.py) and the file it is written to ---

#: The measurement file's header, card by card (the format on disk: MEASUREMENT_FORMAT 1).
#: Existing measurements stay valid only while a measured frame's file keeps exactly these.
MEASUREMENT_CARDS = [
    ("MEASFMT", "luigi_phot measurement format"), ("IMAGE", "frame measured"),
    ("MJDSTART", "exposure start MJD (UTC)"), ("MJDMID", "mid-exposure MJD (UTC)"),
    ("EXPTIME", "exposure time [s]"), ("FILTER", "filter"), ("AIRMASS", "airmass"),
    ("GAIN", "gain used [e-/ADU]"), ("RDNOISE", "read noise used [e-]"), ("UNITS_IN", "pixel units of the file"),
    ("PIXSCALE", "pixel scale [arcsec/pix]: reference / alignment"), ("SKY_E", "median sky [e-/pix]"),
    ("SKYSIG_E", "median background spread [e-/pix]"), ("PIXSIG_E", "pixel noise from adjacent pixels [e-]"),
    ("PIXVAR", "background pixel variance used in errors [e2]"), ("SRCVARF", "source Poisson variance per electron"),
    ("ERRPLANE", "errors from the ERR extension"), ("FWHMPIX", "PSF FWHM at the frame centre [pix]"),
    ("FWHMAS", "PSF FWHM at the frame centre [arcsec]"), ("PSFVARY", "PSF size varies across the frame"),
    ("PSFCHI2", "PSF fit chi2 per dof"), ("PSFMISF", "PSF core misfit (relative rms model error)"),
    ("PSFNSTAR", "stars in the PSF fit"), ("PHSCALE", "frame/reference flux ratio from PSF stars"),
    ("PHSCALEE", "its uncertainty"), ("NCOSMIC", "pixels flagged as cosmic-ray hits (grown)"),
    ("NEIGHSUB", "neighbour light subtracted"), ("SKYEST", "annulus sky: clipped mean or clipped median"),
    ("SITELAT", "site latitude [deg]"), ("SITELON", "site longitude [deg E]"), ("SITEALT", "site height [m]"),
    ("CATID", "catalogue measured against"), ("PSFFWHM", "PSF FWHM [pix] (Moffat, geometric mean)"),
    ("PSFELL", "PSF ellipticity 1-b/a"), ("PSFTHETA", "PSF major axis angle [deg] from +x"),
    ("PSFBETA", "PSF Moffat beta"),
    *[(f"PSFSZ{k}", "ln(FWHM/PSFFWHM) quadratic in u,v (see docs)") for k in range(6)],
    *[(f"ALN_{ij}", "ref->frame affine") for ij in ("00", "01", "02", "10", "11", "12")],
    ("ALN_RMS", "alignment residual RMS [pix]"), ("ALN_N", "stars matched in alignment"),
    ("ALN_METH", "alignment method"), ("ALN_ROT", "rotation of frame vs reference [deg]"),
    ("ALN_SCAL", "frame pix per reference pix"), ("APRAD", "aperture radius [pix]"),
    ("ANNRIN", "sky annulus inner radius [pix]"), ("ANNROUT", "sky annulus outer radius [pix]"),
    ("PIXDIG", "sha256 of the science pixels"), ("FRAMEDIG", "sha256 of the frame measured"),
]
#: Its columns and their FITS types (E float32, I int16), in order.
MEASUREMENT_COLUMNS = [("x", "E"), ("y", "E"), ("flux", "E"), ("flux_err", "E"), ("sky", "E"), ("sky_sigma", "E"),
                       ("n_sky", "I"), ("neighbour_flux", "E"), ("flags", "I"), ("repaired", "E")]


@pytest.fixture(scope="module")
def measured(small_dataset):
    cfg, cat, path = small_dataset
    m = measure_frame(load_frame(path, cfg.camera), cat, MeasureSettings.from_config(cfg.photometry))
    return cat, m


def _same_value(a, b, rel: float = 0.0) -> bool:
    """Equal values (floats within `rel`), NaN equal to NaN, and a bool only equal to a bool."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        return (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)
                and all(_same_value(x, y, rel) for x, y in zip(a, b)))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rel * abs(a) or (np.isnan(a) and np.isnan(b))
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _differences(a, b, rel: float = 0.0) -> list[str]:
    return [f.name for f in dataclasses.fields(a) if not _same_value(getattr(a, f.name), getattr(b, f.name), rel)]


#: A float card holds what fits in its 20 columns: 15-17 significant digits.
CARD_PRECISION = 1e-14


def test_the_star_table_has_one_row_per_catalogue_star_with_units(measured):
    cat, m = measured
    stars = m.stars
    assert stars.colnames == list(STAR_COLUMNS) and len(stars) == len(cat.stars)
    assert stars["x"].unit == u.pix and stars["y"].unit == u.pix
    for name in ("flux", "flux_err", "neighbour_flux"):
        assert stars[name].unit == u.electron
    assert stars["sky"].unit == u.electron / u.pix and stars["n_sky"].unit == u.pix
    assert stars["flags"].unit is None
    assert stars["flags"].dtype == np.int16 and stars["n_sky"].dtype == np.int16 and stars["flux"].dtype == np.float32
    # a quantity in electrons converts as one: the unit is a real astropy unit, not a label
    assert stars["flux"].quantity[cat.target_index].to_value(u.electron) == pytest.approx(
        float(stars["flux"][cat.target_index]))


def test_the_facts_are_typed_and_agree_with_the_table(measured):
    cat, m = measured
    f = m.facts
    assert f.image and f.catalogue_id == cat.catalogue_id and f.alignment_method in ("wcs", "pattern", "identity")
    assert type(f.psf_n_stars) is int and type(f.errors_from_err_plane) is bool and f.psf_n_stars >= 3
    assert f.fwhm_centre_arcsec == pytest.approx(f.fwhm_centre_pix * f.pixel_scale_arcsec)
    assert f.alignment_matrix.shape == (2, 3) and len(f.psf_size_coeffs) in (0, 6)
    assert f.pixel_digest is None and f.frame_digest is None    # the task adds them


def test_a_measured_frames_file_keeps_the_format_and_its_facts_read_back(measured, tmp_path):
    cat, m = measured
    facts = dataclasses.replace(m.facts, pixel_digest="0f" * 16, frame_digest="a1" * 16)
    path = tmp_path / "frame.phot.fits"
    write_measurement(path, m.stars, facts)
    with fits.open(path) as hdul:
        hdu = hdul["PHOT"]
        header, data = hdu.header, hdu.data
        cards = [(c.keyword, c.comment) for c in header.cards][header.index("MEASFMT"):]
        columns = [(c.name, c.format) for c in hdu.columns]
        assert not [k for k in header if k.startswith("TUNIT")]
        for name in m.stars.colnames:
            assert np.array_equal(data[name], m.stars[name], equal_nan=True)
    expected = [c for c in MEASUREMENT_CARDS if not c[0].startswith("PSFSZ") or len(facts.psf_size_coeffs)]
    assert cards[:-1] == expected and cards[-1][0] == "EXTNAME"
    assert columns == MEASUREMENT_COLUMNS
    assert header["ALN_01"] == pytest.approx(facts.alignment_matrix[0, 1], rel=CARD_PRECISION)
    assert header["FWHMAS"] == pytest.approx(facts.fwhm_centre_arcsec, rel=CARD_PRECISION)
    rec = read_measurement(path)
    assert _differences(rec.facts, facts, rel=CARD_PRECISION) == []
    assert rec.stars["flux"].unit == u.electron and np.array_equal(rec.stars["flux"], m.stars["flux"], equal_nan=True)
    # the facts read back, written again, read back the same: nothing more is lost on the way
    again = tmp_path / "again.phot.fits"
    write_measurement(again, rec.stars, rec.facts)
    assert _differences(read_measurement(again).facts, rec.facts) == []


def test_facts_round_trip_nan_and_missing_cards(measured):
    cat, m = measured
    facts = dataclasses.replace(m.facts, airmass=np.nan, site_latitude_deg=np.nan, psf_size_coeffs=(0.01, -0.02))
    header = fits.Header()
    for key, (value, comment) in facts.cards().items():
        header[key] = ("NaN" if isinstance(value, float) and np.isnan(value) else value, comment)
    back = FrameFacts.from_header(header)
    assert _differences(back, facts, rel=CARD_PRECISION) == [] and np.isnan(back.airmass) and back.psf_size_coeffs == (0.01, -0.02)
    # a file from before a card existed: NaN for a number it lacks, None for the rest
    old = FrameFacts.from_header(fits.Header([("IMAGE", "old.fits"), ("EXPTIME", 60.0)]))
    assert old.image == "old.fits" and old.exptime_s == 60.0 and np.isnan(old.mjd_mid)
    assert old.psf_n_stars is None and old.alignment_method is None and old.psf_size_coeffs == ()
    assert np.isnan(old.alignment_matrix).all()


def test_a_rejection_reads_back_as_rejection_facts(tmp_path):
    path = tmp_path / "r.fits"
    write_rejection(path, "frame-2.fits", "too few stars for the PSF (2)", mjd_mid=61300.5,
                    extra={"FRAMEDIG": ("b2" * 16, "sha256 of the frame rejected")})
    facts = read_measurement(path).facts
    assert facts == RejectionFacts(image="frame-2.fits", reason="too few stars for the PSF (2)", mjd_mid=61300.5,
                                   frame_digest="b2" * 16)
    write_rejection(path, "frame-3.fits", "unreadable")
    with fits.open(path) as hdul:
        assert "MJDMID" not in hdul["PHOT"].header
    assert read_measurement(path).facts.mjd_mid is None
