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
from tests.fault_tools import (assert_no_traceback, check_outputs_readable, console, input_checksums,
                               log_lines, log_runs, user_dataset)

#: Small LCO-like dataset: 6 frames (plain and fpack), 384x384 (as in test_bad_input).
SMALL = SyntheticConfig(seed=3, n_frames=6, shape=(384, 384), n_stars=500, compress="mixed", n_nights=2)
TARGET = SMALL.target_name
#: Every frame of the hostile dataset carries this FILTER: a path out of red_dir, and a subdirectory.
HOSTILE_FILTER = "x/../../ESCAPED/SDSS/i"
FILTER_TOKEN = "x_.._.._ESCAPED_SDSS_i"
PROPERTY = settings(max_examples=150, derandomize=True, deadline=None, database=None,
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
    # a frame and its funpack'ed copy: other bytes, the same pixels, one exposure
    packed_name = next(n for n in frames_of(red) if n.endswith(".fits.fz"))
    with fits.open(red / packed_name) as hdul:
        plain = fits.HDUList([fits.PrimaryHDU(header=hdul[0].header)]
                             + [fits.ImageHDU(h.data, h.header, name=h.name) for h in hdul[1:]
                                if h.is_image])
        plain.writeto(red / "funpacked.fits")
    # a frame without its bad-pixel mask, with the synthetic frames' hot column: measured
    derived(red, src[1], "no_bpm.fits", 30, lambda h: h.pop("BPM"))
    # a site far above the Earth: ignored (the geocentre is used), the frame measured
    derived(red, src[1], "site_in_space.fits", 31, set_header("HEIGHT", 1e300))
    return {"rejected": rejected_as, "genuine_twin": src[2], "copied": src[1], "packed": packed_name,
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


@pytest.mark.slow
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
    packed = {hostile_run["packed"], "funpacked.fits"}
    assert len(used(lc) & packed) == 1, "a frame and its funpack'ed copy: exactly one is used"
    assert used(lc) - copies - packed == expected - copies - packed
    # the record knows every frame by its exact name
    record = json.loads((red / "reduction_record.json").read_text())
    assert set(record["frames"]) >= set(hostile_run["measured"]) | set(hostile_run["rejected"])


@pytest.mark.parametrize("case", ["exptime_huge", "exptime_zero", "mjd_12h_off", "year_1850", "loop", "dangling",
                                  "pipe", "cut", "mislabelled", "genuine_twin"])
@pytest.mark.slow
def test_a_hostile_frame_is_one_rejected_frame(hostile_run, case):
    red = hostile_run["red"]
    name = hostile_run["genuine_twin"] if case == "genuine_twin" else \
        next(n for n in hostile_run["rejected"] if n.startswith(case))
    reason = hostile_run["rejected"][name]
    found = rejected(red, FILTER_TOKEN)
    assert name in found and reason in found[name], (name, found.get(name))
    assert [ln for ln in log_lines(red) if f"{name}" in ln and reason in ln and " WARNING " in ln]


@pytest.mark.slow
def test_nothing_is_written_outside_red_dir_and_the_filter_is_a_safe_token(hostile_run):
    red, base = hostile_run["red"], hostile_run["base"]
    assert tree_outside(base, red) == hostile_run["outside"]
    assert not any(p.is_dir() for p in red.iterdir() if p.name not in ("photometry", "a_directory.fits"))
    products = sorted(p.name for p in red.iterdir() if p.name.startswith(TARGET))
    assert products == sorted(f"{TARGET}_{FILTER_TOKEN}{s}" for s in (
        "_lc.ecsv", "_lc.csv", "_lc.png", "_noise.png", "_fwhm_residuals.png", "_rejected.csv", "_finder.png",
        "_report.html"))
    assert (red / "photometry" / f"{TARGET}_{FILTER_TOKEN}_all_stars.fits").is_file()
    assert lightcurve(red, FILTER_TOKEN).meta["filter"] == HOSTILE_FILTER
    assert any(f"(written {FILTER_TOKEN} in file names)" in ln for ln in log_lines(red))
    check_outputs_readable(red)
    # measurement files have short, safe names whatever the frame's name
    names = [p.name for p in (red / "photometry" / "frames").glob("*/*")]
    assert names and all(len(n) < 120 and n.isascii() and n.isprintable() for n in names)


@pytest.mark.slow
def test_hostile_frame_names_are_measured_and_shown_printable(hostile_run):
    red = hostile_run["red"]
    lines = [ln for ln in log_lines(red) if ": measured " in ln]
    assert any("\\nline.fits: measured" in ln for ln in lines)
    assert any("é-frame.fits: measured" in ln for ln in lines)
    assert any("raw\\xffbyte.fits: measured" in ln for ln in lines)
    assert any("L" * 240 + ".fits: measured" in ln for ln in lines)


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_second_run_measures_nothing_and_inputs_are_untouched(hostile_run):
    again, red = hostile_run["again"], hostile_run["red"]
    assert again.returncode == 0, console(again)[-3000:]
    assert "complete ones were encountered" in console(again)
    assert input_checksums(red) == hostile_run["before"]


# --------------------------------------------------------------------------
# One dataset, three runs: content changes of every kind between them
# --------------------------------------------------------------------------


def _replace_keeping_times(path: Path, write) -> None:
    """Write new content into `path` and set its access and modification times back to
    what they were (what `cp -p`, `rsync -t` or a restore do)."""
    st = path.stat()
    write(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _half_the_light(path: Path) -> None:
    with fits.open(path) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    hdul["SCI"].data = (hdul["SCI"].data * 0.5).astype(hdul["SCI"].data.dtype)
    size = path.stat().st_size
    hdul.writeto(path, overwrite=True)
    assert path.stat().st_size == size   # the same size too: only the content differs


@pytest.fixture(scope="module")
def changes_run(template, tmp_path_factory):
    """Run 1: a frame is seen half copied (truncated). Between runs 1 and 2: its copy
    completes with its original mtime; another frame gets other pixels under the same
    name, size and mtime; one frame is deleted; one is only touched. Between runs 2
    and 3: the reference frame is deleted."""
    red = copy_dataset(template, tmp_path_factory.mktemp("changes") / "ip")
    src = plain_frames(red)

    def through_cloud(hdul):   # 0.39 mag less light: a reference made of it is on another scale
        hdul["SCI"].data = (hdul["SCI"].data * 0.7).astype(hdul["SCI"].data.dtype)
    late = derived(red, src[0], "late.fits", 40, through_cloud)
    whole = (red / late).read_bytes()
    mtime = (red / late).stat().st_mtime_ns
    (red / late).write_bytes(whole[: len(whole) // 3])
    os.utime(red / late, ns=(mtime, mtime))
    runs = [reduce_dataset(red, "--workers", "2", timeout=300)]
    lcs = [lightcurve(red)]
    from luigi_phot.photometry.catalogue import Catalogue

    reference = Catalogue.load(red / "photometry" / "catalogue.fits").reference_image
    others = [n for n in frames_of(red) if n not in (reference, late)]
    replaced, deleted, touched = others[0], others[1], others[2]

    (red / late).write_bytes(whole)
    os.utime(red / late, ns=(mtime, mtime))
    _replace_keeping_times(red / replaced, _half_the_light)
    (red / deleted).unlink()
    os.utime(red / touched)
    runs.append(reduce_dataset(red, "--workers", "2", timeout=300))
    lcs.append(lightcurve(red))

    old_catalogue = Catalogue.load(red / "photometry" / "catalogue.fits")
    (red / reference).unlink()
    runs.append(reduce_dataset(red, "--workers", "2", timeout=300))
    lcs.append(lightcurve(red))
    return {"red": red, "runs": runs, "lcs": lcs, "late": late, "replaced": replaced, "deleted": deleted,
            "touched": touched, "reference": reference, "old_catalogue": old_catalogue}


def measured_in(red: Path, run: int) -> list[str]:
    return sorted(ln.split("MeasureImage: ", 1)[1].split(": measured", 1)[0]
                  for ln in log_runs(red)[run] if "MeasureImage: " in ln and ": measured " in ln)


@pytest.mark.slow
def test_the_three_runs_succeed(changes_run):
    for proc in changes_run["runs"]:
        assert proc.returncode == 0, console(proc)[-4000:]
        assert_no_traceback(proc)


@pytest.mark.slow
def test_a_frame_seen_truncated_is_measured_once_its_copy_completes(changes_run):
    red, late = changes_run["red"], changes_run["late"]
    first, second = changes_run["lcs"][:2]
    assert late not in used(first)
    assert [ln for ln in log_runs(red)[0] if f"{late}: rejected: " in ln and "truncated" in ln]
    assert late in used(second) and late in measured_in(red, 1)


@pytest.mark.slow
def test_other_pixels_under_the_same_name_size_and_mtime_are_measured_again(changes_run):
    red, replaced = changes_run["red"], changes_run["replaced"]
    assert replaced in measured_in(red, 1)
    first, second = changes_run["lcs"][:2]
    zp = [float(lc[lc["image"] == replaced]["zero_point"][0]) for lc in (first, second)]
    # half the electrons for the same stars: mag = zero_point - 2.5 log10(rate) needs a zero point 0.75 mag lower
    assert zp[1] - zp[0] == pytest.approx(-2.5 * np.log10(2.0), abs=0.03)
    assert [ln for ln in log_runs(red)[1] if f"{replaced} has new content since the last light curve" in ln
            and " WARNING " in ln]


@pytest.mark.slow
def test_a_touched_frame_is_not_measured_again(changes_run):
    assert measured_in(changes_run["red"], 1) == sorted([changes_run["late"], changes_run["replaced"]])


@pytest.mark.slow
def test_a_frame_that_disappeared_is_named_in_a_warning(changes_run):
    red, deleted = changes_run["red"], changes_run["deleted"]
    warned = [ln for ln in log_runs(red)[1] if f"{deleted} is no longer in red_dir" in ln]
    assert len(warned) == 1 and " WARNING " in warned[0]
    assert deleted not in set(changes_run["lcs"][1]["image"])


@pytest.mark.slow
def test_a_changed_reference_is_reported_and_the_magnitude_scale_kept(changes_run):
    red, reference = changes_run["red"], changes_run["reference"]
    warned = [ln for ln in log_runs(red)[2] if f"reference frame changed from {reference} to " in ln]
    assert len(warned) == 1 and " WARNING " in warned[0], warned
    assert "(it is no longer in red_dir)" in warned[0] and "zero point 25.000 -> " in warned[0]
    before, after = changes_run["lcs"][1], changes_run["lcs"][2]
    common = sorted(used(before) & used(after))
    assert len(common) >= 4
    mag = {name: [float(lc[lc["image"] == name]["mag"][0]) for lc in (before, after)] for name in common}
    shift = np.median([m[1] - m[0] for m in mag.values()])
    assert abs(shift) < 0.02, mag
    # without the calibration, the magnitudes would have moved by the change of scale
    assert abs(after.meta["zero_point_ref"] - 25.0) > 0.2


@pytest.mark.slow
def test_the_catalogue_calibration_agrees_with_the_measured_one(changes_run, tmp_path):
    """The fallback when the two references were not both measured against the old
    catalogue: their catalogues' fluxes, matched by sky position, with each PSF's
    aperture fraction, give nearly the offset the measurements gave."""
    from luigi_phot.config import load_reduction_config
    from luigi_phot.photometry.catalogue import Catalogue
    from luigi_phot.photometry.reference_change import calibrate_reference_change

    red = changes_run["red"]
    new = Catalogue.load(red / "photometry" / "catalogue.fits")
    old = changes_run["old_catalogue"]
    step = calibrate_reference_change(old, new, load_reduction_config(red / "reduction_config.yaml").photometry)
    assert step.n_stars >= 10
    assert step.offset_mag == pytest.approx(new.zp_offset - old.zp_offset, abs=0.03)


# --------------------------------------------------------------------------
# The rules on the functions that carry them (no reduction)
# --------------------------------------------------------------------------

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
if not REAL.is_dir():
    REAL = Path("/work/shared/data/real")

hostile_text = st.one_of(
    st.text(max_size=130),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=130),
    st.sampled_from(["..", ".", "/", "x/../../ESCAPED", "../../../../../tmp/x", "SDSS/i", ".tmp-x", "-rf",
                     "a\nb", "\x00", "é", " ", "~", "$HOME", "*", "photometry/../..", "L" * 300]))
frame_names = st.one_of(st.text(min_size=1, max_size=250), st.sampled_from(["..fits", "-.fits", " .fits"])).filter(
    lambda n: "/" not in n and "\x00" not in n and n not in (".", ".."))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    red = tmp_path_factory.mktemp("sandbox") / "T" / "inst" / "red"
    red.mkdir(parents=True)
    return red


@PROPERTY
@given(filter_value=hostile_text, target=hostile_text, frame=frame_names)
def test_no_product_path_ever_leaves_red_dir(sandbox, filter_value, target, frame):
    """Whatever a header's FILTER, the configured target name or a frame's name holds,
    every file a reduction would write lies in red_dir, under one plain file name of
    fewer than 255 bytes - or the value is refused in one line."""
    from luigi_phot.dataset import atomic_path, catalogue_path, check_inside, measurement_path
    from luigi_phot.names import UnsafeName, safe_token
    from luigi_phot.photometry.lightcurve import product_names

    red, base = sandbox, sandbox.parents[2]
    before = sorted(base.rglob("*"))
    try:
        safe_token(target, "target.name", "reduction_config.yaml")
    except UnsafeName as exc:     # what the configuration refuses never reaches a file name
        assert "\n" not in str(exc) and str(exc).startswith("reduction_config.yaml: target.name ")
        target = TARGET
    try:
        names = product_names(target, filter_value, "frame.fits")
    except UnsafeName as exc:
        assert "\n" not in str(exc) and str(exc).startswith("frame.fits: FILTER ")
        names = {}
    measurement = measurement_path(red, "0123abcd", frame, "f" * 32)
    paths = [red / n for n in names.values()] + [catalogue_path(red), measurement]
    for path in paths:
        assert check_inside(path, red).is_relative_to(red.resolve())
        assert len(os.fsencode(path.name)) < 255 - 14 and not path.name.startswith(".")
        assert path.parent in (red, red / "photometry", measurement.parent)
    for path in (measurement, paths[0]):   # the file system takes the names
        with atomic_path(path, inside=red) as tmp:
            tmp.write_bytes(b"x")
        assert path.exists()
        path.unlink()
    assert [p for p in sorted(base.rglob("*")) if not p.is_relative_to(red)] == \
        [p for p in before if not p.is_relative_to(red)]


def test_a_path_leading_out_of_red_dir_is_never_written(sandbox):
    from luigi_phot.dataset import UnsafePath, atomic_path, atomic_paths

    red, base = sandbox, sandbox.parents[2]
    (red / "link").symlink_to(base, target_is_directory=True)
    try:
        for path in (red / "x/../../ESCAPED", red / "photometry/../../../x", red / "link" / "x", red / ".."):
            with pytest.raises(UnsafePath):
                with atomic_path(path, inside=red) as tmp:
                    tmp.write_bytes(b"x")
            with pytest.raises(UnsafePath):
                with atomic_paths({"a": red / "fine.csv", "b": path}, inside=red) as tmps:
                    for t in tmps.values():
                        t.write_bytes(b"x")
        assert not (base / "ESCAPED").exists() and not (base / "x").exists()
        assert not (red / "fine.csv").exists()
    finally:
        (red / "link").unlink()


@PROPERTY
@given(name=frame_names)
def test_a_frame_name_is_kept_exactly_in_a_fits_header_and_shown_on_one_line(name):
    from luigi_phot.names import name_cards, name_from_header, shown

    header = fits.Header()
    for key, value in name_cards(name).items():
        header[key] = value      # astropy refuses anything a FITS header cannot hold
    assert name_from_header(fits.Header.fromstring(header.tostring())) == name
    assert "\n" not in shown(name) and shown(name).isprintable()


@pytest.mark.parametrize("value, rewritten", [("SDSS/i", "SDSS_i"), ("x/../../ESCAPED", "x_.._.._ESCAPED"),
                                              (".hidden", "_hidden"), ("..", "_."), ("ip", "ip"),
                                              ("H-alpha 656.3/3nm", "H-alpha_656.3_3nm"), ("é", "_")])
def test_a_header_filter_is_rewritten_to_a_safe_token(value, rewritten):
    from luigi_phot.names import safe_token

    assert safe_token(value, "FILTER", "f.fits", rewrite=True) == rewritten


@pytest.mark.parametrize("value", ["", "   ", "x" * 101])
def test_a_header_filter_that_cannot_be_made_safe_is_refused(value):
    from luigi_phot.names import UnsafeName, safe_token

    with pytest.raises(UnsafeName, match=r"^f\.fits: FILTER .* it becomes part of file names$"):
        safe_token(value, "FILTER", "f.fits", rewrite=True)


# ---- configuration

def _config_text(**target) -> str:
    from luigi_phot.config import example_path

    text = example_path("reduction_config.yaml").read_text()
    for key, value in target.items():
        text = "\n".join(f"  {key}: {value!r}" if ln.strip().startswith(f"{key}:") else ln
                         for ln in text.splitlines()) + "\n"
    return text


@pytest.mark.parametrize("name, problem", [
    (".tmp-x", "must not start with a dot"), ("..", "must not start with a dot"), (".", "must not start with a dot"),
    ("T" * 300, "is longer than 100 characters"), ("a/b", "may use only letters, digits and _ . + -"),
    ("é", "may use only")])
def test_target_names_that_would_be_hidden_or_too_long_are_refused(tmp_path, name, problem):
    from luigi_phot.config import ConfigError, load_reduction_config

    path = tmp_path / "reduction_config.yaml"
    path.write_text(_config_text(name=name, data_label="label"), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_reduction_config(path, check_tom_file=False)
    assert str(err.value).startswith(f"{path}: target.name ") and problem in str(err.value)
    assert "\n" not in str(err.value)


def test_a_camera_filter_name_that_a_fits_header_cannot_hold_is_refused(tmp_path):
    from luigi_phot.config import ConfigError, load_reduction_config

    path = tmp_path / "reduction_config.yaml"
    path.write_text(_config_text() + "camera:\n  filter_name: 'r\u00e9'\n")
    with pytest.raises(ConfigError, match=r"camera.filter_name 'ré' must be printable ASCII"):
        load_reduction_config(path, check_tom_file=False)


def test_a_data_label_that_is_not_a_safe_token_is_refused(tmp_path):
    from luigi_phot.config import ConfigError, load_reduction_config

    path = tmp_path / "reduction_config.yaml"
    path.write_text(_config_text(data_label="../label"))
    with pytest.raises(ConfigError, match="tom.data_label '../label' may use only"):
        load_reduction_config(path, check_tom_file=False)


@pytest.mark.parametrize("which", ["reduction", "tom", "manager"])
def test_a_key_given_twice_is_refused_in_every_configuration(tmp_path, which):
    from luigi_phot.config import (ConfigError, example_path, load_manager_config, load_reduction_config,
                                   load_tom_config)

    name, load, key = {"reduction": ("reduction_config.yaml", load_reduction_config, "  aperture_arcsec: 5.0"),
                       "tom": ("tom_config.yaml", load_tom_config, "url: 'http://elsewhere.example'"),
                       "manager": ("manager_config.yaml", load_manager_config, "max_parallel: 64")}[which]
    text = example_path(name).read_text()
    anchor = {"reduction": "  aperture_arcsec:", "tom": "url:", "manager": "max_parallel:"}[which]
    lines = text.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith(anchor))
    path = tmp_path / name
    path.write_text("\n".join(lines[: at + 1] + [key] + lines[at + 1:]) + "\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert f"{path}: not valid YAML at line {at + 2} (duplicate key " in str(err.value), str(err.value)


# ---- frame headers

def _real_frame_with(tmp_path, name="frame.fits", **cards) -> Path:
    """The real Feder Observatory frame with header cards changed (None removes one)."""
    with fits.open(REAL / "eyuma_thumbnail.fit.gz") as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    for key, value in cards.items():
        if value is None:
            hdul[0].header.remove(key.replace("_", "-"), ignore_missing=True)
        else:
            hdul[0].header[key.replace("_", "-")] = value
    hdul.writeto(tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("cards, problem", [
    ({"EXPTIME": 0.0}, "exposure time EXPTIME=0 s is not usable"),
    ({"EXPTIME": -90.0}, "exposure time EXPTIME=-90 s is not usable"),
    ({"EXPTIME": 1e300}, "exposure time EXPTIME=1e+300 s is not usable"),
    ({"EXPTIME": 2e5}, "exposure time EXPTIME=200000 s is not usable"),
    ({"MJD_OBS": 58225.149560185 + 0.5}, "disagree by 12.0 h, more than the exposure (90 s)"),
    ({"MJD_OBS": 58225.149560185 + 200 / 86400}, "disagree by 200 s, more than the exposure (90 s)"),
    ({"DATE_OBS": "1989-12-31T23:59:00", "MJD_OBS": None}, "is outside the years 1990 to 2100"),
    ({"DATE_OBS": None, "MJD_OBS": 88070.0}, "is outside the years 1990 to 2100"),
])
def test_header_values_no_exposure_can_have_are_refused(tmp_path, cards, problem):
    from luigi_phot.photometry.frames import FrameError, read_frame_info

    with pytest.raises(FrameError) as err:
        read_frame_info(_real_frame_with(tmp_path, **cards))
    assert problem in str(err.value) and str(err.value).startswith("frame.fits: ")


def test_a_time_within_the_exposure_and_a_long_exposure_are_accepted(tmp_path):
    from luigi_phot.photometry.frames import read_frame_info

    # MJD-OBS at mid-exposure (45 s after DATE-OBS), as some cameras write it
    info = read_frame_info(_real_frame_with(tmp_path, MJD_OBS=58225.149560185 + 45 / 86400))
    assert info.mjd_start == pytest.approx(58225.149560185, abs=1e-7)
    assert read_frame_info(_real_frame_with(tmp_path, "long.fits", EXPTIME=3600.0, MJD_OBS=None)).exptime_s == 3600.0


def test_a_site_off_the_earth_is_ignored(tmp_path):
    from luigi_phot.config import CameraConfig
    from luigi_phot.photometry.frames import read_frame_info

    path = _real_frame_with(tmp_path, LATITUDE=46.87, LONGITUD=-96.45, HEIGHT=1e300)
    assert read_frame_info(path, CameraConfig(site=(46.87, -96.45, 300.0))).site == (46.87, -96.45, 300.0)


def test_links_that_lead_nowhere_and_fifos_are_listed_and_rejected(tmp_path):
    from luigi_phot.photometry.frames import FrameError, list_frames, load_frame

    shutil.copy(REAL / "eyuma_thumbnail.fit.gz", tmp_path / "good.fits.gz")
    (tmp_path / "loop.fits").symlink_to("loop.fits")
    (tmp_path / "dangling.fits").symlink_to("nowhere.fits")
    (tmp_path / "to_good.fits.gz").symlink_to("good.fits.gz")
    os.mkfifo(tmp_path / "pipe.fits")
    (tmp_path / "dir.fits").mkdir()
    listed = [p.name for p in list_frames(tmp_path)]
    assert listed == ["dangling.fits", "good.fits.gz", "loop.fits", "pipe.fits", "to_good.fits.gz"]
    load_frame(tmp_path / "to_good.fits.gz")
    for name, problem in (("loop.fits", "a symbolic link loop"), ("dangling.fits", "a broken symbolic link"),
                          ("pipe.fits", "not a regular file")):
        with pytest.raises(FrameError, match=problem):
            load_frame(tmp_path / name)


def test_a_truncated_gzip_frame_is_reported_as_truncated(tmp_path):
    from luigi_phot.photometry.frames import FrameError, load_frame

    raw = (REAL / "eyuma_thumbnail.fit.gz").read_bytes()
    (tmp_path / "cut.fit.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FrameError, match=r"not a readable FITS file \(.*truncated or corrupt"):
        load_frame(tmp_path / "cut.fit.gz")


# ---- identities and duplicates

@pytest.fixture
def frames_dir(tmp_path, monkeypatch) -> Path:
    """A directory of frame-named files, in a process that forgets the digests it knew
    and remembers those of files written a moment ago (normally after 2 s)."""
    from luigi_phot import dataset

    monkeypatch.setattr(dataset, "_DIGESTS", {})
    monkeypatch.setattr(dataset, "_UNSETTLED", set())
    monkeypatch.setattr(dataset, "_LOADED", {})
    monkeypatch.setattr(dataset, "_SETTLE_NS", -10**12)
    for k in range(3):
        (tmp_path / f"f{k}.fits").write_bytes(bytes([k]) * 5000)
    return tmp_path


def _forget(monkeypatch):
    from luigi_phot import dataset

    monkeypatch.setattr(dataset, "_DIGESTS", {})
    monkeypatch.setattr(dataset, "_UNSETTLED", set())
    monkeypatch.setattr(dataset, "_LOADED", {})


def test_identity_follows_the_content_whatever_the_times(frames_dir, monkeypatch):
    from luigi_phot.dataset import frame_identities

    first = {f.name: f.digest for f in frame_identities(frames_dir)}
    assert len(set(first.values())) == 3 and all(len(d) == 32 for d in first.values())
    # f0: other bytes, same size, its old times set back (cp -p); f1: only touched
    st = (frames_dir / "f0.fits").stat()
    (frames_dir / "f0.fits").write_bytes(b"\xff" * 5000)
    os.utime(frames_dir / "f0.fits", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(frames_dir / "f1.fits")
    _forget(monkeypatch)
    second = {f.name: f.digest for f in frame_identities(frames_dir)}
    assert second["f0.fits"] != first["f0.fits"]
    assert second["f1.fits"] == first["f1.fits"] and second["f2.fits"] == first["f2.fits"]


def test_unchanged_frames_are_not_read_again_and_a_damaged_cache_is_rebuilt(frames_dir, monkeypatch):
    from luigi_phot import dataset

    first = dataset.frame_identities(frames_dir)
    cache = frames_dir / "photometry" / dataset.DIGEST_CACHE_NAME
    assert set(json.loads(cache.read_text())["frames"]) == {"f0.fits", "f1.fits", "f2.fits"}
    hashed = []
    real = dataset._hash_file
    monkeypatch.setattr(dataset, "_hash_file", lambda p: hashed.append(p.name) or real(p))
    _forget(monkeypatch)
    assert dataset.frame_identities(frames_dir) == first and hashed == []      # from the cache file
    (frames_dir / "f2.fits").write_bytes(b"\x07" * 5000)
    assert dataset.frame_identities(frames_dir)[2].digest != first[2].digest and hashed == ["f2.fits"]
    for damage in (b"{not json", b'{"version": 1, "frames": {"f0.fits": [1, 2, "x"]}}', b"[]"):
        cache.write_bytes(damage)
        _forget(monkeypatch)
        hashed.clear()
        assert [f.digest for f in dataset.frame_identities(frames_dir)][:2] == [f.digest for f in first][:2]
        assert sorted(hashed) == ["f0.fits", "f1.fits", "f2.fits"]
        assert json.loads(cache.read_text())["version"] == 1


def test_unreadable_frames_have_an_identity_that_says_why(frames_dir):
    from luigi_phot.dataset import frame_identities

    (frames_dir / "loop.fits").symlink_to("loop.fits")
    found = {f.name: f for f in frame_identities(frames_dir)}
    assert found["loop.fits"].digest.startswith("unreadable: ") and not found["loop.fits"].readable


def test_frames_with_one_time_are_one_exposure_only_when_byte_identical():
    from luigi_phot.dataset import duplicate_exposures

    t = 61234.5
    same = duplicate_exposures({"b.fits": (t, "d1"), "a.fits": (t + 0.1 / 86400, "d1"), "c.fits": (t + 1, "d2")},
                               prefer=["b.fits"])
    assert same == {"a.fits": "the same exposure as b.fits (identical content): not used twice"}
    differ = duplicate_exposures({"a.fits": (t, "d1"), "genuine.fits": (t, "d2"), "c.fits": (None, "d2")})
    assert set(differ) == {"a.fits", "genuine.fits"}
    assert "the same exposure time as genuine.fits but different content" in differ["a.fits"]
    unknown = duplicate_exposures({"a.fits": (t, None), "b.fits": (t, None)})
    assert set(unknown) == {"a.fits", "b.fits"}


def test_the_manager_reads_the_header_of_a_frame_replaced_with_its_old_times(tmp_path, monkeypatch):
    """The manager's date cache keys on (device, inode, size, mtime, ctime): a frame
    copied over with `cp -p` (same size and mtime, other header time) is read again."""
    from luigi_phot import selection

    red = tmp_path / "red"
    red.mkdir()
    frame = _real_frame_with(red)
    dates = selection.FrameDates(tmp_path / "frame_dates.json")
    assert [round(m, 3) for m in dates.mjds(red)] == [round(58225.149560185 + 45 / 86400, 3)]
    dates.save()
    st = frame.stat()
    frame.unlink()
    _real_frame_with(red, DATE_OBS="2019-04-17T03:35:22", MJD_OBS=58590.149560185)
    os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert frame.stat().st_size == st.st_size
    later = selection.FrameDates(tmp_path / "frame_dates.json")
    assert [round(m) for m in later.mjds(red)] == [58590] and later.headers_read == 1
