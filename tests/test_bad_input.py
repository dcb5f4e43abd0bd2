"""Bad input, through the real `luigi` command: every bad frame is rejected with a
one-line reason naming it (in aperture_pipeline.log and <target>_<filter>_rejected.csv)
while the rest of the dataset is reduced; every bad configuration stops the run
with one line naming the file, the key and the problem, and writes nothing but
the log; a dataset with no usable frame fails saying so.

To keep the suite quick, the bad frames share one dataset and one run (the
module fixture `bad_run`); each case is still its own test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from luigi_phot.photometry import flags as F
from luigi_phot.synthetic import SyntheticConfig
from tests.conftest import copy_dataset, reduce_dataset
from tests.fault_tools import (LOG, assert_no_traceback, console, input_checksums, log_lines, reduce_with_permissions,
                               user_dataset)

pytestmark = pytest.mark.slow

#: Small LCO-like dataset: 6 frames (plain and fpack), 384x384, ~180 catalogue stars.
SMALL = SyntheticConfig(seed=3, n_frames=6, shape=(384, 384), n_stars=500, compress="mixed", n_nights=2)
TARGET = SMALL.target_name
LC = f"{TARGET}_ip_lc.ecsv"
REJECTED = f"{TARGET}_ip_rejected.csv"


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def good_frames(red_dir: Path) -> list[str]:
    return sorted(p.name for p in red_dir.iterdir() if p.name.endswith((".fits", ".fits.fz")))


def _derived(red_dir: Path, source: str, name: str, minutes: float, edit) -> None:
    """A frame made from `source` by `edit(hdul)`, starting `minutes` later (so that it is
    not the same exposure as its source)."""
    with fits.open(red_dir / source) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    h = hdul["SCI"].header
    start = Time(h["DATE-OBS"], format="isot", scale="utc") + minutes * u.min
    h["DATE-OBS"] = start.isot
    h["MJD-OBS"] = start.mjd
    h["UTSTART"] = start.isot.split("T")[1]
    edit(hdul)
    hdul.writeto(red_dir / name)


def add_bad_frames(red_dir: Path) -> dict[str, str]:
    """Write one bad frame of each kind into red_dir; returns name -> expected reason (part)."""
    plain = [n for n in good_frames(red_dir) if n.endswith(".fits") and n.startswith("lsc")]
    src, first = plain[1], good_frames(red_dir)[0]
    raw = (red_dir / src).read_bytes()
    expected = {}

    (red_dir / "bad_empty.fits").write_bytes(b"")
    expected["bad_empty.fits"] = "empty file (0 bytes)"

    (red_dir / "bad_truncated.fits").write_bytes(raw[: len(raw) // 3])
    expected["bad_truncated.fits"] = "truncated"

    (red_dir / "bad_notfits.fits").write_text("SIMPLE? no: this is a text file named .fits\n" * 40)
    expected["bad_notfits.fits"] = "not a FITS file"

    table = fits.BinTableHDU.from_columns([fits.Column(name="flux", format="E", array=np.arange(5.0))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(red_dir / "bad_table.fits")
    expected["bad_table.fits"] = "no 2-D image in the file"

    def no_date(hdul):
        for key in ("DATE-OBS", "MJD-OBS", "UTSTART", "DATE-BEG", "MJD-BEG"):
            hdul["SCI"].header.remove(key, ignore_missing=True, remove_all=True)
    _derived(red_dir, src, "bad_nodate.fits", 1, no_date)
    expected["bad_nodate.fits"] = "no exposure start time (no DATE-OBS or MJD-OBS keyword)"

    _derived(red_dir, src, "bad_noexptime.fits", 2, lambda h: h["SCI"].header.remove("EXPTIME"))
    expected["bad_noexptime.fits"] = "no exposure time (no EXPTIME or EXPOSURE keyword)"

    _derived(red_dir, src, "bad_nofilter.fits", 3, lambda h: h["SCI"].header.remove("FILTER"))
    expected["bad_nofilter.fits"] = "no filter (no FILTER keyword"

    def other_filter(hdul):
        hdul["SCI"].header["FILTER"] = "rp"
    _derived(red_dir, src, "bad_otherfilter.fits", 4, other_filter)
    expected["bad_otherfilter.fits"] = "filter 'rp' is not the dataset's 'ip'"

    def all_nan(hdul):
        hdul["SCI"].data[:] = np.nan
    _derived(red_dir, src, "bad_nan.fits", 5, all_nan)
    expected["bad_nan.fits"] = "only 0.0% of pixels are usable (all NaN or masked)"

    def all_zero(hdul):
        hdul["SCI"].data[:] = 0.0
    _derived(red_dir, src, "bad_zero.fits", 6, all_zero)
    expected["bad_zero.fits"] = "image is constant (every usable pixel = 0)"

    def off_target(hdul):
        # the 130 bottom rows: a real part of the field, but the target (near the centre) is not on it
        for ext in ("SCI", "BPM", "ERR"):
            hdul[ext].data = hdul[ext].data[:130].copy()
    _derived(red_dir, src, "bad_offtarget.fits", 7, off_target)
    expected["bad_offtarget.fits"] = "the field does not cover the target"

    # which of the two is kept is the pipeline's choice (the reference frame, else the first name)
    shutil.copy2(red_dir / first, red_dir / f"copy_of_{first}")
    expected[f"copy_of_{first}"] = "the same exposure as "
    return expected


def wrong_wcs(red_dir: Path) -> str:
    """A good frame whose header WCS is 20 degrees off: its stars still align it."""
    src = [n for n in good_frames(red_dir) if n.endswith(".fits") and n.startswith("lsc")][2]

    def shift(hdul):
        h = hdul["SCI"].header
        h["CRVAL1"] = (h["CRVAL1"] + 20.0) % 360.0
        h["CRVAL2"] = h["CRVAL2"] + 15.0
    _derived(red_dir, src, "wrong_wcs.fits", 9, shift)
    return "wrong_wcs.fits"


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return user_dataset(tmp_path_factory.mktemp("bad_input") / TARGET / "sinistro" / "ip", SMALL)


@pytest.fixture
def dataset(template, tmp_path) -> Path:
    return copy_dataset(template, tmp_path / "ip")


@pytest.fixture(scope="module")
def bad_run(template, tmp_path_factory):
    """One run over the good frames plus one bad frame of every kind (and one with a
    wrong WCS), started through a symlink to red_dir."""
    base = tmp_path_factory.mktemp("bad_run")
    red = copy_dataset(template, base / "ip")
    good = good_frames(red)
    expected = add_bad_frames(red)
    wcs_frame = wrong_wcs(red)
    before = input_checksums(red)
    link = base / "link_to_ip"
    link.symlink_to(red, target_is_directory=True)
    proc = reduce_dataset(link, "--workers", "2", timeout=300)
    return {"proc": proc, "red": red, "good": good, "expected": expected, "wcs_frame": wcs_frame,
            "before": before, "link": link}


# --------------------------------------------------------------------------
# Bad frames: each rejected with its reason, the rest reduced
# --------------------------------------------------------------------------


def test_the_dataset_is_reduced_despite_its_bad_frames(bad_run):
    proc, red = bad_run["proc"], bad_run["red"]
    assert proc.returncode == 0, console(proc)[-4000:]
    assert_no_traceback(proc)
    lc = Table.read(red / LC, format="ascii.ecsv")
    used = {str(r["image"]) for r in lc if not int(r["flags"]) & F.FRAME_REJECTED and np.isfinite(r["flux"])}
    first = bad_run["good"][0]
    assert len(used & {first, f"copy_of_{first}"}) == 1, "a frame and its copy: exactly one is used"
    used = {first if n == f"copy_of_{first}" else n for n in used}
    assert used == set(bad_run["good"]) | {bad_run["wcs_frame"]}
    assert (red / "reduction_record.json").is_file() and not (red / "dataset.lock").exists()
    # bad content is remembered: none of these frames is tried again, the dataset is up to date
    assert json.loads((red / "reduction_record.json").read_text())["retry"] == {}
    assert not list((red / "photometry" / "frames").glob("*/*.retry.json"))


def test_inputs_are_not_modified(bad_run):
    assert input_checksums(bad_run["red"]) == bad_run["before"]


BAD_NAMES = ["bad_empty.fits", "bad_truncated.fits", "bad_notfits.fits", "bad_table.fits", "bad_nodate.fits",
             "bad_noexptime.fits", "bad_nofilter.fits", "bad_otherfilter.fits", "bad_nan.fits", "bad_zero.fits",
             "bad_offtarget.fits", "copy_of_"]


@pytest.mark.parametrize("case", BAD_NAMES)
def test_bad_frame_is_rejected_with_a_one_line_reason(bad_run, case):
    red = bad_run["red"]
    name = next(n for n in bad_run["expected"] if n.startswith(case))
    reason = bad_run["expected"][name]
    if case == "copy_of_":  # the same exposure twice: one of the two names is rejected, naming the other
        first = bad_run["good"][0]
        rejected = {str(r["image"]) for r in Table.read(red / REJECTED, format="ascii.csv")}
        assert len(rejected & {first, name}) == 1, rejected
        name, kept = (first, name) if first in rejected else (name, first)
        reason = f"the same exposure as {kept}"
    rows = [r for r in Table.read(red / REJECTED, format="ascii.csv") if str(r["image"]) == name]
    assert len(rows) == 1, f"{name} not in {REJECTED}"
    assert reason in str(rows[0]["reason"]), rows[0]["reason"]
    warned = [ln for ln in log_lines(red) if f"{name}: " in ln and "rejected" in ln and reason in ln]
    assert warned, f"no log line says why {name} was rejected"
    assert all(" WARNING " in ln for ln in warned)
    lc = Table.read(red / LC, format="ascii.ecsv")
    assert all(int(r["flags"]) & F.FRAME_REJECTED for r in lc if str(r["image"]) == name)


def test_wrong_wcs_is_reported_and_the_frame_aligned_on_its_stars(bad_run):
    red, name = bad_run["red"], bad_run["wcs_frame"]
    warned = [ln for ln in log_lines(red) if f"{name}: header WCS" in ln]
    assert len(warned) == 1 and " WARNING " in warned[0], warned
    assert "ignored" in warned[0]
    lc = Table.read(red / LC, format="ascii.ecsv")
    row = lc[lc["image"] == name]
    assert len(row) == 1 and row["flags"][0] & F.FRAME_REJECTED == 0 and np.isfinite(row["flux"][0])


def test_red_dir_given_through_a_symlink_is_resolved(bad_run):
    red, link = bad_run["red"], bad_run["link"]
    starts = [ln for ln in log_lines(red) if "reducing " in ln]
    assert starts and all(f"reducing {red.resolve()} " in ln for ln in starts), starts
    assert not any(str(link) in ln for ln in log_lines(red))


def measured_in_run(red: Path, run: int) -> list[str]:
    """Frames the `run`-th run (0-based) of the dataset's log measured."""
    runs: list[list[str]] = []
    for ln in log_lines(red):
        if "========== run " in ln:
            runs.append([])
        elif runs and "MeasureImage: " in ln and ": measured " in ln:
            runs[-1].append(ln.split("MeasureImage: ", 1)[1].split(":", 1)[0])
    return sorted(runs[run])


def measurement_files(red: Path) -> dict[str, tuple[int, int]]:
    """Measurement files: name -> (inode, mtime_ns)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (red / "photometry" / "frames").glob("*/*.phot.fits")}


def test_unreadable_frame_is_rejected_for_this_run_only_and_measured_once_readable(dataset):
    """A frame the reducing user cannot read (mode 000; as root, the run is made without
    the capabilities that let root read any file) is rejected with its reason, but the
    rejection is not remembered: once readable again (no touch, its mtime unchanged), the
    next run measures that frame alone and it enters the light curve."""
    from luigi_phot.tasks.reduce import dataset_is_current

    frame = good_frames(dataset)[3]
    before = input_checksums(dataset)
    (dataset / frame).chmod(0)
    try:
        proc = reduce_with_permissions(dataset, timeout=300)
        still_denied = reduce_with_permissions(dataset, timeout=300)   # not current: tried again, still denied
    finally:
        (dataset / frame).chmod(0o644)
    for run in (proc, still_denied):
        assert run.returncode == 0, console(run)[-4000:]
        assert_no_traceback(run)
    rows = [r for r in Table.read(dataset / REJECTED, format="ascii.csv") if str(r["image"]) == frame]
    assert len(rows) == 1 and "cannot be read (permission denied)" in rows[0]["reason"]
    warned = [ln for ln in log_lines(dataset) if f"{frame}: rejected: cannot be read (permission denied)" in ln]
    assert len(warned) == 2 and all(" WARNING " in ln and "tried again on the next run" in ln for ln in warned)
    lc = Table.read(dataset / LC, format="ascii.ecsv")
    assert set(lc["image"]) == set(good_frames(dataset)) - {frame}
    record = json.loads((dataset / "reduction_record.json").read_text())
    assert list(record["retry"]) == [frame] and not dataset_is_current(dataset)
    assert measured_in_run(dataset, 1) == []          # the readable frames were not measured again
    done_before = measurement_files(dataset)

    rerun = reduce_dataset(dataset, "--workers", "2", timeout=300)
    assert rerun.returncode == 0, console(rerun)[-4000:]
    assert measured_in_run(dataset, 2) == [frame]
    after = measurement_files(dataset)
    # (measurement files are named <frame>.<digest of name and content>.phot.fits)
    assert all(after[n] == ident for n, ident in done_before.items() if not n.startswith(f"{frame}."))
    lc = Table.read(dataset / LC, format="ascii.ecsv")
    assert set(lc["image"]) == set(good_frames(dataset))
    row = lc[lc["image"] == frame]
    assert row["flags"][0] & F.FRAME_REJECTED == 0 and np.isfinite(row["flux"][0])
    assert frame not in {str(r["image"]) for r in Table.read(dataset / REJECTED, format="ascii.csv")}
    record = json.loads((dataset / "reduction_record.json").read_text())
    assert record["retry"] == {} and record["n_rejected"] == 0 and dataset_is_current(dataset)
    assert not list((dataset / "photometry" / "frames").glob("*/*.retry.json"))
    assert input_checksums(dataset) == before


def test_an_io_error_reading_a_frame_is_environmental_but_bad_content_is_not(dataset, monkeypatch):
    """How MeasureImage tells a rejection to retry from one to remember: the OSError under
    the FrameError that load_frame raises (kept as its context), or an unreadable file."""
    import errno

    from astropy.io import fits as fits_module

    from luigi_phot.photometry.frames import FrameError, load_frame
    from luigi_phot.dataset import environmental_cause

    path = dataset / good_frames(dataset)[0]
    (dataset / "bad_notfits.fits").write_text("SIMPLE? no: this is a text file named .fits\n" * 40)
    with pytest.raises(FrameError) as content:
        load_frame(dataset / "bad_notfits.fits")
    assert not environmental_cause(content.value, dataset / "bad_notfits.fits")

    def failing_open(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(fits_module, "open", failing_open)
    with pytest.raises(FrameError) as io_error:
        load_frame(path)
    assert "Input/output error" in str(io_error.value)
    assert environmental_cause(io_error.value, path)


def test_a_frame_that_crashes_the_measurement_is_rejected_not_fatal(dataset, monkeypatch):
    """Pixels nobody foresaw that make the measurement code raise: that frame is
    rejected naming the exception (traceback in the log), the others are reduced.
    Run in this process (luigi.build, one worker) so that the crash can be planted."""
    import luigi

    from luigi_phot.photometry import measure
    from luigi_phot.tasks import ReduceDataset

    victim = good_frames(dataset)[2]
    real = measure.measure_frame

    def crashing(frame, *args, **kwargs):
        if frame.name == victim:
            raise IndexError("index 400 is out of bounds for axis 0 with size 384")
        return real(frame, *args, **kwargs)

    monkeypatch.setattr(measure, "measure_frame", crashing)
    # ReduceDataset's own (nested) build takes the scheduler from the configuration,
    # as `luigi --local-scheduler` sets it
    config = luigi.configuration.get_config()
    config.set("core", "local_scheduler", "true")
    try:
        result = luigi.build([ReduceDataset(red_dir=str(dataset))], local_scheduler=True, workers=1,
                             detailed_summary=True)
    finally:
        config.remove_option("core", "local_scheduler")
    assert result.status == luigi.LuigiStatusCode.SUCCESS, result.summary_text
    rows = [r for r in Table.read(dataset / REJECTED, format="ascii.csv") if str(r["image"]) == victim]
    assert len(rows) == 1 and "measurement failed (IndexError: index 400 is out of bounds" in rows[0]["reason"]
    text = (dataset / LOG).read_text()
    assert f"{victim}: measurement raised:\nTraceback" in text
    lc = Table.read(dataset / LC, format="ascii.ecsv")
    used = {str(r["image"]) for r in lc if not int(r["flags"]) & F.FRAME_REJECTED}
    assert used == set(good_frames(dataset)) - {victim}


# --------------------------------------------------------------------------
# No usable frame
# --------------------------------------------------------------------------


def test_dataset_without_a_usable_frame_fails_saying_so(dataset):
    for name in good_frames(dataset):
        (dataset / name).unlink()
    (dataset / "a.fits").write_bytes(b"")
    (dataset / "b.fits").write_text("not FITS\n")
    fits.HDUList([fits.PrimaryHDU(np.full((64, 64), np.nan, np.float32))]).writeto(dataset / "c.fits")
    proc = reduce_dataset(dataset, timeout=120)
    assert proc.returncode != 0
    assert_no_traceback(proc)
    failed = [ln for ln in console(proc).splitlines() if "no usable frame" in ln]
    assert failed, console(proc)[-3000:]
    assert all(s in failed[-1] for s in ("a.fits: empty file", "b.fits: not a FITS file", "c.fits")), failed[-1]
    assert not (dataset / "reduction_record.json").exists() and not (dataset / "dataset.lock").exists()


def test_a_new_datasets_first_frame_and_second_frame_each_give_the_light_curve_its_points(dataset, tmp_path):
    """A night's first frame of a new field is its reference: its point is in the light
    curve at once, on its own scale (no calibration uncertainty). The second frame is
    calibrated against the first (every comparison star has two points); the first
    frame's point stays as it was."""
    held = tmp_path / "held"
    held.mkdir()
    first, second, *later = good_frames(dataset)
    for name in [second, *later]:
        (dataset / name).rename(held / name)
    proc = reduce_dataset(dataset, timeout=180)
    assert proc.returncode == 0, console(proc)[-3000:]
    one = Table.read(dataset / LC, format="ascii.ecsv")
    assert list(one["image"]) == [first]
    assert one["flags"][0] & F.SEVERE == 0 and one["flux"][0] > 0 and one["zero_point_err"][0] == 0.0
    (held / second).rename(dataset / second)
    proc = reduce_dataset(dataset, timeout=180)
    assert proc.returncode == 0, console(proc)[-3000:]
    two = Table.read(dataset / LC, format="ascii.ecsv")
    assert sorted(two["image"]) == [first, second]
    assert np.all(np.asarray(two["flags"]) & F.SEVERE == 0) and np.all(np.asarray(two["zero_point_err"]) < 0.01)
    row = list(two["image"]).index(first)
    assert two["flux"][row] == pytest.approx(one["flux"][0], rel=1e-9)


def test_dataset_without_any_frame_fails_saying_so(dataset):
    for name in good_frames(dataset):
        (dataset / name).unlink()
    proc = reduce_dataset(dataset, timeout=120)
    assert proc.returncode != 0
    assert_no_traceback(proc)
    assert any("no frames (*.fits, *.fits.fz, ...) in the dataset directory" in ln
               for ln in console(proc).splitlines()), console(proc)[-3000:]


# --------------------------------------------------------------------------
# Bad configuration: one line naming file, key and problem; nothing written
# --------------------------------------------------------------------------

CONFIG_CASES = {
    # case: (edit of the YAML text or None to delete the file, expected message part)
    "missing": (None, "reduction_config.yaml: reduction configuration not found"),
    "empty": (lambda t: "", "reduction_config.yaml: reduction configuration is empty"),
    "not_yaml": (lambda t: "target: [RA, Dec\nphotometry: {\n", "reduction_config.yaml: not valid YAML at line"),
    "not_a_mapping": (lambda t: "- just\n- a list\n", "must be a YAML mapping of keys to values, not list"),
    "missing_key": (lambda t: "\n".join(ln for ln in t.splitlines() if "RA:" not in ln),
                    "reduction_config.yaml: missing key target.RA"),
    "wrong_type": (lambda t: t.replace("aperture_arcsec: 2.0", "aperture_arcsec: two arcsec"),
                   "reduction_config.yaml: photometry.aperture_arcsec must be a number, not 'two arcsec'"),
    "ra_out_of_range": (lambda t: _set_line(t, "RA:", "  RA: '25:10:00.0'"),
                        "reduction_config.yaml: target.RA '25:10:00.0' is not a valid sexagesimal RA"),
    "dec_out_of_range": (lambda t: _set_line(t, "Dec:", "  Dec: -95.5"),
                         "reduction_config.yaml: target.Dec -95.5 is out of range"),
    "python_tag": (lambda t: t.replace("aperture_arcsec: 2.0",
                                       "aperture_arcsec: !!python/object/apply:os.system ['touch EVALUATED']"),
                   "reduction_config.yaml: not valid YAML at line"),
    "duplicate_key": (lambda t: t.replace("aperture_arcsec: 2.0", "aperture_arcsec: 2.0\n  aperture_arcsec: 9.0"),
                      "(duplicate key 'aperture_arcsec': each key may be given once)"),
    "target_too_long": (lambda t: _set_line(t, "name:", "  name: '" + "T" * 300 + "'"),
                        "is longer than 100 characters: it becomes part of file names"),
}


def _set_line(text: str, key: str, line: str) -> str:
    return "\n".join(line if ln.strip().startswith(key) else ln for ln in text.splitlines()) + "\n"


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_configuration_stops_with_one_line(dataset, case):
    edit, message = CONFIG_CASES[case]
    path = dataset / "reduction_config.yaml"
    if edit is None:
        path.unlink()
    else:
        path.write_text(edit(path.read_text()))
    before = input_checksums(dataset)
    listing = sorted(p.name for p in dataset.iterdir())
    proc = reduce_dataset(dataset, timeout=120)
    assert proc.returncode != 0
    assert_no_traceback(proc)
    lines = [ln for ln in console(proc).splitlines() if message in ln]
    assert lines, console(proc)[-3000:]
    assert str(path) in lines[0]
    # nothing but the log is written
    assert sorted(p.name for p in dataset.iterdir()) == sorted(set(listing) | {LOG})
    assert input_checksums(dataset) == before
    assert any(message in ln and " ERROR " in ln for ln in log_lines(dataset))
    assert not (dataset.parent / "EVALUATED").exists() and not (dataset / "EVALUATED").exists()
