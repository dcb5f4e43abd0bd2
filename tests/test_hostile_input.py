"""Hostile input, through the real `luigi` command (issue 17): values from outside never
steer where files are written, every changed frame is measured again, one bad frame
is one rejected frame, duplicates are decided by content, changes are visible.

To keep the suite quick, the hostile frames share one dataset and one run (the
module fixture `hostile_run`), and the changes between runs one dataset and three
runs (`changes_run`); each case is still its own test. The fast tests at the end
check the same rules on the functions that carry them (no reduction).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from luigi_phot.photometry import flags as F
from luigi_phot.synthetic import SyntheticConfig
from tests.conftest import copy_dataset, reduce_dataset
from tests.fault_tools import (LOG, assert_no_traceback, check_outputs_readable, console, input_checksums,
                               log_lines, log_runs, user_dataset)

#: Small LCO-like dataset: 6 frames (plain and fpack), 384x384 (as in test_bad_input).
SMALL = SyntheticConfig(seed=3, n_frames=6, shape=(384, 384), n_stars=500, compress="mixed", n_nights=2)
TARGET = SMALL.target_name
#: Every frame of the hostile dataset carries this FILTER: a path out of red_dir, and a subdirectory.
HOSTILE_FILTER = "x/../../ESCAPED/SDSS/i"
FILTER_TOKEN = "x_.._.._ESCAPED_SDSS_i"
PROPERTY = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def frames_of(red: Path) -> list[str]:
    return sorted(p.name for p in red.iterdir() if p.name.endswith((".fits", ".fits.fz")) and p.is_file())


def plain_frames(red: Path) -> list[str]:
    return [n for n in frames_of(red) if n.endswith(".fits") and n.startswith("lsc")]


def derived(red: Path, source: str, name: str, minutes: float, edit=None) -> str:
    """A frame made from `source`, starting `minutes` later (not the same exposure), edited
    by `edit(hdul)`; written under `name` (any characters a file name may have)."""
    with fits.open(red / source) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    h = hdul["SCI"].header
    start = Time(h["DATE-OBS"], format="isot", scale="utc") + minutes * u.min
    h["DATE-OBS"] = start.isot
    h["MJD-OBS"] = start.mjd
    h["UTSTART"] = start.isot.split("T")[1]
    if edit is not None:
        edit(hdul)
    with open(os.path.join(os.fsencode(red), os.fsencode(name)), "wb") as fh:
        hdul.writeto(fh)
    return name


def set_header(key: str, value):
    def edit(hdul):
        hdul["SCI"].header[key] = value
    return edit


def lightcurve(red: Path, filter_token: str = "ip") -> Table:
    return Table.read(red / f"{TARGET}_{filter_token}_lc.ecsv", format="ascii.ecsv")


def rejected(red: Path, filter_token: str = "ip") -> dict[str, str]:
    rows = Table.read(red / f"{TARGET}_{filter_token}_rejected.csv", format="ascii.csv")
    return {str(r["image"]): str(r["reason"]) for r in rows}


def used(lc: Table) -> set[str]:
    return {str(r["image"]) for r in lc if not int(r["flags"]) & F.FRAME_REJECTED and np.isfinite(r["flux"])}


def tree_outside(base: Path, red: Path) -> list[str]:
    """Every path under `base` that is not under `red`."""
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if not p.is_relative_to(red))


# --------------------------------------------------------------------------
# One dataset, one run: every kind of hostile frame
# --------------------------------------------------------------------------

#: Good frames under names no file-system rule forbids: measured like any other.
ODD_NAMES = {"accent": "é-frame.fits", "newline": "new\nline.fits", "long": "L" * 240 + ".fits",
             "bytes": os.fsdecode(b"raw\xffbyte.fits")}


def add_hostile_frames(red: Path) -> dict:
    """Write the hostile frames into red_dir; returns what the run should make of them."""
    src = plain_frames(red)
    rejected_as = {}
    for k, name in enumerate(ODD_NAMES.values()):
        derived(red, src[0], name, 10 + k)
    rejected_as[derived(red, src[0], "exptime_huge.fits", 20, set_header("EXPTIME", 1e300))] = \
        "exposure time EXPTIME=1e+300 s is not usable"
    rejected_as[derived(red, src[0], "exptime_zero.fits", 21, set_header("EXPTIME", 0.0))] = \
        "exposure time EXPTIME=0 s is not usable"
    rejected_as[derived(red, src[0], "mjd_12h_off.fits", 22,
                        lambda h: h["SCI"].header.set("MJD-OBS", h["SCI"].header["MJD-OBS"] + 0.5))] = \
        "disagree by 12.0 h, more than the exposure"
    rejected_as[derived(red, src[0], "year_1850.fits", 23, lambda h: [
        h["SCI"].header.set("DATE-OBS", "1850-07-13T01:28:00.196"), h["SCI"].header.remove("MJD-OBS")])] = \
        "is outside the years 1990 to 2100"
    (red / "loop.fits").symlink_to("loop.fits")
    rejected_as["loop.fits"] = "a symbolic link loop"
    (red / "dangling.fits").symlink_to("nowhere.fits")
    rejected_as["dangling.fits"] = "a broken symbolic link"
    os.mkfifo(red / "pipe.fits")
    rejected_as["pipe.fits"] = "not a regular file"
    (red / "a_directory.fits").mkdir()
    import gzip
    packed = gzip.compress((red / src[1]).read_bytes())
    (red / "cut.fits.gz").write_bytes(packed[: len(packed) // 2])
    rejected_as["cut.fits.gz"] = "a truncated or corrupt gzip file"
    # a frame whose header has another frame's time, on other pixels; and a byte copy
    twin = fits.getheader(red / src[2], "SCI")

    def mislabel(hdul):
        for key in ("DATE-OBS", "MJD-OBS", "UTSTART"):
            hdul["SCI"].header[key] = twin[key]
    derived(red, src[1], "mislabelled.fits", 0, mislabel)
    rejected_as["mislabelled.fits"] = f"the same exposure time as {src[2]} but different content"
    rejected_as[src[2]] = "the same exposure time as mislabelled.fits but different content"
    shutil.copy2(red / src[1], red / "byte_copy.fits")
    # a frame without its bad-pixel mask, with the synthetic frames' hot column: measured
    derived(red, src[1], "no_bpm.fits", 30, lambda h: h.pop("BPM"))
    # a site far above the Earth: ignored (the geocentre is used), the frame measured
    derived(red, src[1], "site_in_space.fits", 31, set_header("HEIGHT", 1e300))
    return {"rejected": rejected_as, "genuine_twin": src[2], "copied": src[1],
            "measured": [*ODD_NAMES.values(), "no_bpm.fits", "site_in_space.fits"]}


def set_filter_everywhere(red: Path, value: str) -> None:
    for name in frames_of(red):
        with fits.open(red / name, mode="update") as hdul:
            hdul["SCI"].header["FILTER"] = value


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return user_dataset(tmp_path_factory.mktemp("hostile") / TARGET / "sinistro" / "ip", SMALL)


@pytest.fixture(scope="module")
def hostile_run(template, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile_run")
    red = copy_dataset(template, base / "T" / "sinistro" / "ip")
    good = frames_of(red)
    set_filter_everywhere(red, HOSTILE_FILTER)
    expected = add_hostile_frames(red)
    outside = tree_outside(base, red)
    before = input_checksums(red)
    proc = reduce_dataset(red, "--workers", "2", timeout=300)
    again = reduce_dataset(red, timeout=120)
    return {"proc": proc, "again": again, "red": red, "base": base, "good": good, "outside": outside,
            "before": before, **expected}


def test_a_dataset_of_hostile_frames_is_reduced(hostile_run):
    proc, red = hostile_run["proc"], hostile_run["red"]
    assert proc.returncode == 0, console(proc)[-4000:]
    assert_no_traceback(proc)
    from luigi_phot.names import shown

    lc = lightcurve(red, FILTER_TOKEN)
    expected = set(hostile_run["good"]) - {hostile_run["genuine_twin"]}
    expected |= {shown(n) for n in hostile_run["measured"]}
    copies = {hostile_run["copied"], "byte_copy.fits"}
    assert len(used(lc) & copies) == 1, "a frame and its byte copy: exactly one is used"
    assert used(lc) - copies == expected - copies
    # the record knows every frame by its exact name
    record = json.loads((red / "reduction_record.json").read_text())
    assert set(record["frames"]) >= set(hostile_run["measured"]) | set(hostile_run["rejected"])


@pytest.mark.parametrize("case", ["exptime_huge", "exptime_zero", "mjd_12h_off", "year_1850", "loop", "dangling",
                                  "pipe", "cut", "mislabelled", "genuine_twin"])
def test_a_hostile_frame_is_one_rejected_frame(hostile_run, case):
    red = hostile_run["red"]
    name = hostile_run["genuine_twin"] if case == "genuine_twin" else \
        next(n for n in hostile_run["rejected"] if n.startswith(case))
    reason = hostile_run["rejected"][name]
    found = rejected(red, FILTER_TOKEN)
    assert name in found and reason in found[name], (name, found.get(name))
    assert [ln for ln in log_lines(red) if f"{name}" in ln and reason in ln and " WARNING " in ln]


def test_nothing_is_written_outside_red_dir_and_the_filter_is_a_safe_token(hostile_run):
    red, base = hostile_run["red"], hostile_run["base"]
    assert tree_outside(base, red) == hostile_run["outside"]
    assert not any(p.is_dir() for p in red.iterdir() if p.name not in ("photometry", "a_directory.fits"))
    products = sorted(p.name for p in red.iterdir() if p.name.startswith(TARGET))
    assert products == sorted(f"{TARGET}_{FILTER_TOKEN}{s}" for s in (
        "_lc.ecsv", "_lc.csv", "_lc.png", "_noise.png", "_fwhm_residuals.png", "_rejected.csv"))
    assert (red / "photometry" / f"{TARGET}_{FILTER_TOKEN}_all_stars.fits").is_file()
    assert lightcurve(red, FILTER_TOKEN).meta["filter"] == HOSTILE_FILTER
    assert any(f"(written {FILTER_TOKEN} in file names)" in ln for ln in log_lines(red))
    check_outputs_readable(red)
    # measurement files have short, safe names whatever the frame's name
    names = [p.name for p in (red / "photometry" / "frames").glob("*/*")]
    assert names and all(len(n) < 120 and n.isascii() and n.isprintable() for n in names)


def test_hostile_frame_names_are_measured_and_shown_printable(hostile_run):
    red = hostile_run["red"]
    lines = [ln for ln in log_lines(red) if ": measured " in ln]
    assert any("\\nline.fits: measured" in ln for ln in lines)
    assert any("é-frame.fits: measured" in ln for ln in lines)
    assert any("raw\\xffbyte.fits: measured" in ln for ln in lines)
    assert any("L" * 240 + ".fits: measured" in ln for ln in lines)


def test_the_frame_without_a_bad_pixel_mask_is_measured_with_its_hot_column_masked(hostile_run):
    red = hostile_run["red"]
    warned = [ln for ln in log_lines(red) if "no_bpm.fits: no bad-pixel mask: column x = 307 masked as bad" in ln]
    assert len(warned) == 1
    row = lightcurve(red, FILTER_TOKEN)
    row = row[row["image"] == "no_bpm.fits"]
    assert len(row) == 1 and not row["flags"][0] & F.FRAME_REJECTED
    frames = fits.getdata(red / "photometry" / f"{TARGET}_{FILTER_TOKEN}_all_stars.fits", "FRAMES")
    rms = float(frames["alignment_rms_pix"][list(frames["image"]).index("no_bpm.fits")])
    assert rms < 0.2


def test_a_second_run_measures_nothing_and_inputs_are_untouched(hostile_run):
    again, red = hostile_run["again"], hostile_run["red"]
    assert again.returncode == 0, console(again)[-3000:]
    assert "complete ones were encountered" in console(again)
    assert input_checksums(red) == hostile_run["before"]
