"""The reduction manager's plain part, without Luigi: its configuration, finding datasets,
the four selection groups, frame dates from reduction records and the header cache,
the lock pre-check and the run log."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from astropy.io import fits
from astropy.table import Table

from luigi_phot import dataset_lock as lock, selection
from luigi_phot.config import ConfigError, load_manager_config
from luigi_phot.dataset import RECORD_NAME
from luigi_phot.run_log import ManagerLog, Outcome, count_line
from luigi_phot.selection import (FrameDates, discover_datasets, lock_skip_reason, mjd_to_date, read_dataset_list,
                                  select_datasets)
from luigi_phot.synthetic import SyntheticConfig, generate_dataset

#: Tiny frames: only headers and dates matter here.
TINY = dict(n_frames=2, shape=(128, 128), n_stars=60, bad_column=50, n_saturated=0, n_variables=1)


def make_dataset(root: Path, rel: str, first_night: str, seed: int = 1, n_nights: int = 1) -> Path:
    red = root / rel
    generate_dataset(red, SyntheticConfig(seed=seed, first_night=first_night, n_nights=n_nights, **TINY))
    return red


def frame_dates(red: Path) -> set[dt.date]:
    """UTC dates of a synthetic dataset's frames, from its truth table."""
    return {mjd_to_date(m) for m in Table.read(red / "synthetic_truth.ecsv", format="ascii.ecsv")["mjd_mid"]}


def write_config(path: Path, root: Path, log_dir: Path, selection: dict, instruments=("sinistro", "qhy"),
                 max_parallel: int = 2) -> Path:
    lines = [f"log_dir: '{log_dir}'", f"data_reduction_dir: '{root}'", "software_dir: 'None'",
             f"instrument_list: {list(instruments)}", "dataset_selection:"]
    lines += [f"  {k}: {v!r}" if isinstance(v, str) else f"  {k}: {v}" for k, v in selection.items()]
    lines.append(f"max_parallel: {max_parallel}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tree_template(tmp_path_factory) -> Path:
    """Six datasets on known nights, plus what discovery must leave out."""
    root = tmp_path_factory.mktemp("selection") / "reduction"
    make_dataset(root, "T-A/sinistro/ip", "2026-03-01", seed=1)
    make_dataset(root, "T-A/sinistro/gp", "2026-03-05", seed=2, n_nights=2)   # frames on two nights
    make_dataset(root, "T-A/qhy/ip", "2026-02-20", seed=3)
    make_dataset(root, "T-B/sinistro/ip", "2026-03-06", seed=4)
    make_dataset(root, "T-B/qhy/ip", "2026-03-03", seed=5)
    make_dataset(root, "T-B/qhy/gp", "2026-06-01", seed=6)
    make_dataset(root, "T-B/spectral/ip", "2026-03-03", seed=7)        # instrument not in the list
    make_dataset(root, "T-B/qhy/.hidden", "2026-03-03", seed=8)        # hidden directory
    unconfigured = make_dataset(root, "T-B/qhy/rp", "2026-03-03", seed=9)
    (unconfigured / "reduction_config.yaml").unlink()
    return root


@pytest.fixture
def tree(tree_template, tmp_path) -> Path:
    root = tmp_path / "reduction"
    shutil.copytree(tree_template, root, copy_function=shutil.copy2)
    return root


def names(datasets) -> list[str]:
    return sorted(d.name for d in datasets)


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------


def test_example_manager_config_has_the_spec_keys_and_parses_with_real_paths(tmp_path):
    from luigi_phot.config import example_path

    text = example_path("manager_config.yaml").read_text()
    for key in ("log_dir", "data_reduction_dir", "software_dir", "instrument_list", "dataset_selection",
                "group", "file", "start_date", "end_date", "ndays", "max_parallel"):
        assert f"{key}:" in text
    (tmp_path / "red").mkdir()
    (tmp_path / "list.txt").write_text("T/sinistro/ip\n")
    text = (text.replace("/path/to/logging/directory/", str(tmp_path / "logs"))
            .replace("/path/to/top-level/reduction/directory/", str(tmp_path / "red"))
            .replace("/path/to/datasets/file/reduce_datasets.txt", str(tmp_path / "list.txt")))
    path = tmp_path / "manager.yaml"
    path.write_text(text)
    cfg = load_manager_config(path)
    assert cfg.selection.group == "file" and cfg.selection.start_date is None and cfg.selection.end_date is None
    assert cfg.instrument_list == ("sinistro", "qhy") and cfg.max_parallel == 5


@pytest.mark.parametrize("selection, message", [
    ({"group": "date", "start_date": "None", "end_date": "None"}, "start_date or end_date is required"),
    ({"group": "date", "start_date": "2026/03/01"}, "not a date in %Y-%m-%d form"),
    ({"group": "date", "start_date": "2026-03-05", "end_date": "2026-03-01"}, "is after end_date"),
    ({"group": "recent", "ndays": 0}, "ndays must be > 0"),
    ({"group": "recent", "ndays": "three"}, "ndays must be a number"),
    ({"group": "file", "file": "None"}, "file is required"),
    ({"group": "file", "file": "missing.txt"}, "does not exist"),
    ({"group": "some"}, "must be one of all, date, recent, file"),
    ({"group": "all", "n_days": 3}, "unknown key dataset_selection.n_days"),
])
def test_manager_config_errors_are_one_line_and_name_the_key(tmp_path, selection, message):
    path = write_config(tmp_path / "m.yaml", tmp_path, tmp_path / "logs", selection)
    with pytest.raises(ConfigError) as err:
        load_manager_config(path)
    assert message in str(err.value) and "\n" not in str(err.value) and str(path) in str(err.value)


def test_manager_config_log_dir_must_not_be_a_file(tmp_path):
    (tmp_path / "logs").write_text("")
    with pytest.raises(ConfigError, match="log_dir .* is not a directory"):
        load_manager_config(write_config(tmp_path / "m.yaml", tmp_path, tmp_path / "logs", {"group": "all"}))


def test_manager_config_dates_and_float_ndays(tmp_path):
    cfg = load_manager_config(write_config(tmp_path / "m.yaml", tmp_path, tmp_path / "logs",
                                           {"group": "date", "start_date": "2026-03-01", "end_date": "None",
                                            "ndays": 1.5}))
    assert cfg.selection.start_date == dt.date(2026, 3, 1) and cfg.selection.end_date is None
    assert cfg.selection.ndays == 1.5


# --------------------------------------------------------------------------
# discovery and the groups
# --------------------------------------------------------------------------


def test_discovery_finds_target_instrument_filter_directories_of_listed_instruments(tree, tmp_path):
    outside = make_dataset(tmp_path / "elsewhere", "X/sinistro/ip", "2026-03-01", seed=10)
    (tree / "T-A" / "sinistro" / "zp").symlink_to(outside, target_is_directory=True)
    (tree / "T-A" / "sinistro" / "alias").symlink_to(tree / "T-A" / "sinistro" / "ip", target_is_directory=True)
    datasets, problems = discover_datasets(tree, ["sinistro", "qhy"])
    assert names(datasets) == ["T-A/qhy/ip", "T-A/sinistro/gp", "T-A/sinistro/ip", "T-B/qhy/gp", "T-B/qhy/ip",
                               "T-B/sinistro/ip"]
    assert all(d.red_dir == d.red_dir.resolve() and d.red_dir.is_relative_to(tree.resolve()) for d in datasets)
    text = "\n".join(problems)
    assert "T-B/qhy/rp: no reduction_config.yaml" in text
    assert "T-A/sinistro/zp: resolves to" in text and "outside data_reduction_dir" in text
    assert "T-A/sinistro/alias: the same directory as T-A/sinistro/ip (a symbolic link)" in text
    assert "spectral" not in text and ".hidden" not in text
    assert len(problems) == 3


def test_group_all_selects_every_dataset(tree, tmp_path):
    cfg = load_manager_config(write_config(tmp_path / "m.yaml", tree, tmp_path / "logs", {"group": "all"}))
    sel = select_datasets(cfg)
    assert len(sel.datasets) == sel.n_found == 6 and sel.headers_read == 0
    assert any("T-B/qhy/rp" in p for p in sel.problems)


def test_group_date_includes_both_days_and_needs_one_frame_in_range(tree, tmp_path):
    start = min(frame_dates(tree / "T-A/sinistro/ip"))      # a dataset whose only night is the first day
    end = min(frame_dates(tree / "T-A/sinistro/gp"))        # a dataset whose first of two nights is the last day
    assert max(frame_dates(tree / "T-A/sinistro/gp")) > end
    assert min(frame_dates(tree / "T-B/sinistro/ip")) == end + dt.timedelta(days=1)   # one day too late
    assert max(frame_dates(tree / "T-A/qhy/ip")) < start                               # too early
    cfg = load_manager_config(write_config(tmp_path / "m.yaml", tree, tmp_path / "logs",
                                           {"group": "date", "start_date": str(start), "end_date": str(end)}))
    sel = select_datasets(cfg)
    assert names(sel.datasets) == ["T-A/sinistro/gp", "T-A/sinistro/ip", "T-B/qhy/ip"]
    # Never reduced: headers are read, each dataset's only until a frame is in range
    # (1 for each selected dataset, 2 for each of the other three) ...
    assert sel.headers_read == 9
    # ... and then the dates come from log_dir/frame_dates.json.
    assert select_datasets(cfg).headers_read == 0


def test_group_date_with_one_open_end(tree, tmp_path):
    cfg = load_manager_config(write_config(tmp_path / "m.yaml", tree, tmp_path / "logs",
                                           {"group": "date", "start_date": "None",
                                            "end_date": str(max(frame_dates(tree / "T-A/qhy/ip")))}))
    assert names(select_datasets(cfg).datasets) == ["T-A/qhy/ip"]


def test_group_recent_counts_ndays_back_from_now_and_ignores_the_dates(tree, tmp_path):
    truth = Table.read(tree / "T-B/qhy/gp" / "synthetic_truth.ecsv", format="ascii.ecsv")
    now = float(max(truth["mjd_mid"])) + 2.0
    cfg = load_manager_config(write_config(tmp_path / "m.yaml", tree, tmp_path / "logs",
                                           {"group": "recent", "ndays": 2.5, "start_date": "2026-03-01",
                                            "end_date": "2026-03-31"}))
    assert names(select_datasets(cfg, now_mjd=now).datasets) == ["T-B/qhy/gp"]
    # a frame exactly ndays old still counts; a little older does not
    last = float(max(truth["mjd_mid"]))
    assert names(select_datasets(cfg, now_mjd=last + 2.5).datasets) == ["T-B/qhy/gp"]
    assert select_datasets(cfg, now_mjd=last + 2.5 + 1e-3).datasets == []


def test_group_file_reads_relative_paths_and_reports_what_it_cannot_use(tree, tmp_path):
    (tmp_path / "secret" / "x").mkdir(parents=True)
    (tmp_path / "secret" / "x" / "reduction_config.yaml").write_text("target: {}\n")
    (tree / "T-A" / "escape").symlink_to(tmp_path / "secret" / "x", target_is_directory=True)
    listing = tmp_path / "reduce_datasets.txt"
    listing.write_text("\n".join([
        "# datasets to redo",
        "T-A/qhy/ip",
        "",
        "   T-B/qhy/gp   ",
        "T-A/qhy/ip",                        # twice: once
        "T-A/sinistro/../qhy/ip",            # the same again, spelled differently
        "T-X/sinistro/ip",                   # does not exist
        "../secret/x",                       # outside
        "T-A/escape",                        # a symlink leading outside
        "T-B/qhy/rp",                        # no configuration
        f"{tree}/T-B/sinistro/ip",           # absolute, inside: accepted
        "T-A/sinistro/ip/reduction_config.yaml",   # not a directory
    ]) + "\n")
    cfg = load_manager_config(write_config(tmp_path / "m.yaml", tree, tmp_path / "logs",
                                           {"group": "file", "file": str(listing)}))
    sel = select_datasets(cfg)
    assert names(sel.datasets) == ["T-A/qhy/ip", "T-B/qhy/gp", "T-B/sinistro/ip"]
    problems = "\n".join(sel.problems)
    assert len(sel.problems) == 5
    assert "line 7 'T-X/sinistro/ip': does not exist" in problems
    assert "line 8 '../secret/x': resolves to" in problems and "outside data_reduction_dir" in problems
    assert "line 9 'T-A/escape': resolves to" in problems
    assert "line 10 'T-B/qhy/rp': no reduction_config.yaml" in problems
    assert "line 12" in problems and "is not a directory" in problems
    assert all(d.red_dir.is_relative_to(tree.resolve()) for d in sel.datasets)


@pytest.mark.parametrize("entry, problem", [
    ("T-A/sinistro/ip", None),
    ("  T-A/sinistro/ip/  ", None),
    ("alias/sinistro/ip", None),                      # a symlink that stays inside
    ("ABSOLUTE_INSIDE", None),
    ("T-A/sinistro/out", "(through a symbolic link), outside data_reduction_dir"),
    ("T-A/../../elsewhere/ip", "outside data_reduction_dir"),
    ("ABSOLUTE_OUTSIDE", "outside data_reduction_dir"),
    (".", "is data_reduction_dir itself"),
    ("T-A/sinistro/missing", "does not exist"),
    ("loop", "cannot be resolved (symbolic link loop)"),
    ("T-A/sinistro/ip\x00", "cannot be resolved (embedded null byte"),
])
def test_each_dataset_list_entry_is_confined_to_data_reduction_dir(tree, tmp_path, entry, problem):
    """One entry at a time, through read_dataset_list (the manager's only way in): what
    resolves inside data_reduction_dir is taken, everything else is one line, skipped."""
    (tmp_path / "elsewhere" / "ip").mkdir(parents=True)
    (tmp_path / "elsewhere" / "ip" / "reduction_config.yaml").write_text("target: {}\n")
    (tree / "T-A" / "sinistro" / "out").symlink_to(tmp_path / "elsewhere" / "ip", target_is_directory=True)
    (tree / "alias").symlink_to(tree / "T-A", target_is_directory=True)
    (tree / "loop").symlink_to(tree / "loop")
    (tree / "reduction_config.yaml").write_text("target: {}\n")   # root itself is still not a dataset
    entry = {"ABSOLUTE_INSIDE": str(tree / "T-A" / "sinistro" / "ip"),
             "ABSOLUTE_OUTSIDE": str(tmp_path / "elsewhere" / "ip")}.get(entry, entry)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# one entry\n{entry}\n")
    datasets, problems = read_dataset_list(listing, tree)
    if problem is None:
        assert problems == [] and [(d.name, d.red_dir) for d in datasets] == [
            ("T-A/sinistro/ip", (tree / "T-A" / "sinistro" / "ip").resolve())]
    else:
        assert datasets == [] and len(problems) == 1
        assert problems[0].startswith(f"{listing}, line 2 {entry.strip()!r}: ")
        assert problem in problems[0] and problems[0].endswith(": skipped") and "\n" not in problems[0]


def test_unreadable_dataset_list_is_a_one_line_configuration_error(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="dataset list cannot be read"):
        read_dataset_list(listing, tmp_path)


# --------------------------------------------------------------------------
# frame dates: records first, headers once
# --------------------------------------------------------------------------


@pytest.fixture
def count_header_reads(monkeypatch):
    opened = []
    real = selection.read_frame_info

    def counting(path, camera=None):
        opened.append(Path(path).name)
        return real(path, camera)

    monkeypatch.setattr(selection, "read_frame_info", counting)
    return opened


def write_record(red: Path, mjds: dict[str, float | None]) -> None:
    """A reduction_record.json as ReleaseLock writes it (only the fields the manager reads),
    with the frames' content digests, known from then on (a reduction caches them)."""
    from luigi_phot import dataset

    settle, dataset._SETTLE_NS = dataset._SETTLE_NS, -1   # frames written a moment ago
    try:
        digests = {f.name: f.digest for f in dataset.frame_identities(red)}
    finally:
        dataset._SETTLE_NS = settle
    (red / RECORD_NAME).write_text(json.dumps({"run_id": "earlier", "frames": {
        name: {"mjd": mjd, "rejected": None, "digest": digests.get(name)} for name, mjd in mjds.items()}}))


def test_dates_come_from_the_reduction_record_without_opening_frames(tree, tmp_path, count_header_reads):
    red = tree / "T-A/qhy/ip"
    frames = sorted(p.name for p in red.glob("*.fits"))
    # The record says 2025 while the headers say 2026: the dates show which was used.
    write_record(red, {name: 60740.5 for name in frames})
    dates = FrameDates(tmp_path / "frame_dates.json")
    assert [mjd_to_date(m) for m in dates.mjds(red.resolve())] == [mjd_to_date(60740.5)] * 2
    assert mjd_to_date(60740.5).year == 2025
    assert count_header_reads == []

    # A frame added since the reduction: only its header is read, once.
    new = red / "lsc1m005-fa15-20260301-0099-e91.fits"
    with fits.open(red / frames[0]) as hdul:
        hdul["SCI"].header["DATE-OBS"] = "2026-03-04T05:00:00.000"
        hdul["SCI"].header["MJD-OBS"] = 61103.208333
        hdul.writeto(new)
    assert 61103.2 < max(dates.mjds(red.resolve())) < 61103.3
    assert count_header_reads == [new.name]
    dates.save()
    assert max(FrameDates(tmp_path / "frame_dates.json").mjds(red.resolve())) == pytest.approx(
        61103.208333 + 60 / 86400.0)
    assert count_header_reads == [new.name]

    # A recorded frame given other content (its times set back, as cp -p does) is read again.
    st = (red / frames[1]).stat()
    with fits.open(red / frames[1]) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    hdul["SCI"].header["OBJECT"] = "other"
    hdul.writeto(red / frames[1], overwrite=True)
    os.utime(red / frames[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    list(FrameDates(tmp_path / "frame_dates.json").mjds(red.resolve()))
    assert count_header_reads == [new.name, frames[1]]


def test_date_group_after_reductions_reads_no_header(tree, tmp_path, count_header_reads):
    for red in tree.glob("T-*/*/*"):
        if (red / "reduction_config.yaml").is_file():
            truth = Table.read(red / "synthetic_truth.ecsv", format="ascii.ecsv")
            write_record(red, {str(r["image"]): float(r["mjd_mid"]) for r in truth})
    cfg = load_manager_config(write_config(tmp_path / "m.yaml", tree, tmp_path / "logs",
                                           {"group": "date", "start_date": "2026-03-01", "end_date": "2026-03-31"}))
    sel = select_datasets(cfg)
    assert sel.headers_read == 0 and count_header_reads == []
    assert len(sel.datasets) == 4 and not (tmp_path / "logs" / "frame_dates.json").exists()


def test_a_frame_without_a_usable_time_is_read_once_and_stays_undated(tree, tmp_path, count_header_reads):
    red = tree / "T-B/qhy/gp"
    for path in red.glob("*.fits"):
        with fits.open(path, mode="update") as hdul:
            for key in ("DATE-OBS", "MJD-OBS", "DATE-BEG", "MJD-BEG"):
                hdul["SCI"].header.remove(key, ignore_missing=True)
    (red / "lsc1m005-fa15-20260601-0001-e91.fits").write_bytes(b"not a FITS file")
    dates = FrameDates(tmp_path / "frame_dates.json")
    assert list(dates.mjds(red.resolve())) == []
    dates.save()
    assert list(FrameDates(tmp_path / "frame_dates.json").mjds(red.resolve())) == []
    assert len(count_header_reads) == 3


# --------------------------------------------------------------------------
# locks, log
# --------------------------------------------------------------------------


def test_lock_pre_check_skips_live_and_unknown_holders_but_not_stale_ones(tree):
    red = tree / "T-A/sinistro/ip"
    assert lock_skip_reason(red) is None
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.acquire(red, "live-run", pid=sleeper.pid)
        reason = lock_skip_reason(red)
        assert reason.startswith("locked: being reduced by run live-run") and str(sleeper.pid) in reason
    finally:
        sleeper.kill()
        sleeper.wait()
    assert lock_skip_reason(red) is None           # its process is gone: stale, may be taken over
    (red / lock.LOCK_NAME).write_text(json.dumps({
        "host": "another-" + socket.gethostname(), "pid": 4242, "pid_start": None, "user": "ana",
        "started_utc": "2026-11-01T00:00:00Z", "run_id": "remote-run"}))
    reason = lock_skip_reason(red)
    assert "remote-run" in reason and "cannot be checked from this host" in reason
    assert f"remove {red / lock.LOCK_NAME}" in reason


def test_manager_log_appends_lines_carrying_the_run_id(tmp_path):
    for run_id in ("run-1", "run-2"):
        log = ManagerLog(tmp_path / "logs", run_id)
        log.info("hello")
        log.error("trouble")
        log.close()
    lines = (tmp_path / "logs" / "arcon_pipeline.log").read_text().splitlines()
    assert len(lines) == 4
    assert "INFO    [run-1] hello" in lines[0] and "ERROR   [run-2] trouble" in lines[3]


def test_count_line_and_outcome_lines():
    ds = selection.Dataset(Path("/data/T/sinistro/ip"), "T/sinistro/ip")
    outcomes = [Outcome(ds, "reduced", run_id="r1", started_unix=10.0, finished_unix=22.5),
                Outcome(ds, "up_to_date"), Outcome(ds, "skipped", "locked: being reduced by run r0"),
                Outcome(ds, "failed", "no frames", run_id="r2")]
    assert count_line(outcomes) == "4 datasets selected: 1 reduced, 1 up to date, 1 skipped, 1 failed"
    assert outcomes[0].line() == "T/sinistro/ip: reduced in 12.5 s (run r1)"
    assert outcomes[2].line() == "T/sinistro/ip: skipped: locked: being reduced by run r0"
    assert outcomes[3].line() == "T/sinistro/ip: FAILED: no frames (run r2)"
