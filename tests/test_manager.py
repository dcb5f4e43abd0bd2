"""ReductionManager end to end: the real `luigi` command against a real luigid started
by the test setup (tests/luigid_server.py), on a generated tree of small datasets.

How concurrency is measured: luigid's task history records, for every
ReduceDataset, the moment the scheduler handed it to a worker (RUNNING: it takes
one unit of the luigi_phot_dataset resource) and the moment it was reported
DONE or FAILED (the unit is given back). Each run's outcome files add the
worker's own view: the start and end of ReduceDataset.run(), which lies inside
that interval and contains the dataset lock's whole life. The largest number
of overlapping intervals is the number of dataset reductions at once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import luigi
import pytest
from astropy.table import Table

from luigi_phot import dataset_lock as lock
from luigi_phot.dataset import LOG_NAME, RECORD_NAME, read_json
from luigi_phot.run_log import MANAGER_LOG_NAME, RUNS_DIR
from luigi_phot.selection import mjd_to_date
from luigi_phot.report import INDEX_NAME
from luigi_phot.synthetic import SyntheticConfig, generate_dataset
from luigi_phot.tasks import BuildLightcurve, MeasureImage, ReduceDataset, ReductionManager
from tests.conftest import LUIGI, copy_dataset, run_luigi
from tests.test_manager_selection import write_config

pytestmark = pytest.mark.slow

#: Small frames: a dataset reduces in a few seconds.
SMALL = dict(n_frames=4, shape=(256, 256), n_stars=300, bad_column=100, seeing_arcsec=(1.0, 1.8))
TODAY = dt.datetime.now(dt.timezone.utc).date()

#: dataset -> (first night, days before today; nights)
TREE = {
    "T-A/sinistro/ip": (200, 1),   # date range: its only night is the first day
    "T-A/sinistro/gp": (196, 2),   # date range: the first of its two nights is the last day
    "T-A/qhy/ip": (210, 1),        # before the date range
    "T-A/qhy/gp": (3, 1),          # recent
    "T-B/sinistro/ip": (2, 1),     # recent
    "T-B/sinistro/gp": (195, 1),   # the day after the date range
    "T-B/qhy/ip": (198, 1),        # inside the date range
    "T-B/qhy/gp": (30, 1),         # neither
}
DATE_GROUP = {"T-A/sinistro/ip", "T-A/sinistro/gp", "T-B/qhy/ip"}
RECENT_GROUP = {"T-A/qhy/gp", "T-B/sinistro/ip"}
FILE_GROUP = {"T-A/qhy/ip", "T-B/sinistro/gp"}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def manager_command(config: Path, *extra: str) -> list[str]:
    return ["--module", "luigi_phot", "ReductionManager", "--config", str(config), *extra]


def run_manager(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_luigi(*manager_command(config, *extra), cwd=config.parent, timeout=900)


def start_manager(config: Path, output: Path, *extra: str) -> subprocess.Popen:
    """Start a manager in the background, its console output going to a file (not a pipe:
    a pipe nobody reads yet would fill and block it)."""
    with open(output, "w") as out:
        return subprocess.Popen([str(LUIGI), *manager_command(config, *extra)], cwd=config.parent,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def summaries(log_dir: Path) -> list[dict]:
    """summary.json of every manager run that wrote to log_dir, oldest first."""
    return [json.loads(p.read_text()) for p in sorted((log_dir / RUNS_DIR).glob("*/summary.json"))]


def by_status(summary: dict, status: str) -> set[str]:
    return {o["dataset"]["name"] for o in summary["outcomes"] if o["status"] == status}


def reduced_on_disk(root: Path) -> set[str]:
    return {str(p.parent.relative_to(root)) for p in root.glob(f"*/*/*/{RECORD_NAME}")}


def finished_runs(red: Path) -> int:
    """How many reductions of the dataset finished (its log says so once per run)."""
    log = red / LOG_NAME
    return log.read_text().count("] reduction finished") if log.exists() else 0


def history_intervals(luigid, root: Path) -> list[tuple[dt.datetime, dt.datetime]]:
    """(RUNNING, DONE or FAILED) times luigid recorded for the ReduceDataset tasks under root."""
    prefix = f"{root.resolve()}/"
    rows = luigid.history(
        "SELECT t.id, e.event_name, e.ts FROM tasks t JOIN task_events e ON e.task_id = t.id "
        "JOIN task_parameters p ON p.task_id = t.id AND p.name = 'red_dir' "
        "WHERE t.name = 'ReduceDataset' AND substr(p.value, 1, ?) = ? ORDER BY e.ts, e.id", len(prefix), prefix)
    started, intervals = {}, []
    for task, event, ts in rows:
        ts = dt.datetime.fromisoformat(ts)
        if event == "RUNNING":
            started[task] = ts
        elif event in ("DONE", "FAILED") and task in started:
            intervals.append((started.pop(task), ts))
    assert not started, f"ReduceDataset tasks still running: {started}"
    return intervals


def max_overlap(intervals) -> int:
    """Largest number of intervals open at once (one that ends as another starts does not overlap)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def overview_rows(index: Path) -> dict[str, list[str]]:
    """The night overview's table: dataset name -> the text of its cells."""
    class Rows(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "tr" and ("class", "dataset-row") in attrs:
                self.rows.append([])
            elif tag == "td" and self.rows:
                self.cell = ""

        def handle_endtag(self, tag):
            if tag == "td" and self.cell is not None:
                self.rows[-1].append(self.cell)
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    parser = Rows()
    parser.feed(index.read_text(encoding="utf-8"))
    return {row[0].removesuffix(" (no page)"): row for row in parser.rows}


def run_intervals(summary: dict) -> list[tuple[float, float]]:
    return [(o["started_unix"], o["finished_unix"]) for o in summary["outcomes"] if o["status"] == "reduced"]


def night_field_ra(night: dt.date) -> float:
    """An RA that culminates near local midnight on that night (opposite the Sun, whose
    RA grows by ~360 deg a year from 0 at the March equinox): the synthetic field must be
    above the horizon when its frames are taken."""
    sun_ra = 360.0 * ((night - dt.date(2000, 3, 20)).days % 365.2422) / 365.2422
    return (sun_ra + 180.0) % 360.0


def frame_dates(red: Path) -> set[dt.date]:
    return {mjd_to_date(m) for m in Table.read(red / "synthetic_truth.ecsv", format="ascii.ecsv")["mjd_mid"]}


# --------------------------------------------------------------------------
# the tree
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree_template(tmp_path_factory) -> Path:
    """Eight small datasets (2 targets x 2 instruments x 2 filters) on nights chosen so that
    the date and recent groups select different sets; a directory without a configuration
    and a dataset of an instrument not in the list."""
    root = tmp_path_factory.mktemp("manager_tree") / "reduction"
    for seed, (rel, (days_ago, nights)) in enumerate(TREE.items(), 30):
        target, _, filt = rel.split("/")
        night = TODAY - dt.timedelta(days=days_ago)
        generate_dataset(root / rel, SyntheticConfig(seed=seed, first_night=night.isoformat(), n_nights=nights,
                                                     field_ra_deg=night_field_ra(night), target_name=target,
                                                     filter_name=filt, **SMALL))
    tiny = dict(n_frames=2, shape=(128, 128), n_stars=60, bad_column=50, n_saturated=0, n_variables=1,
                first_night=TODAY.isoformat(), field_ra_deg=night_field_ra(TODAY))
    generate_dataset(root / "T-B/spectral/ip", SyntheticConfig(seed=50, **tiny))
    generate_dataset(root / "T-B/qhy/rp", SyntheticConfig(seed=51, **tiny))
    (root / "T-B/qhy/rp/reduction_config.yaml").unlink()
    return root


def copy_tree(template: Path, dst: Path, only=None) -> Path:
    for rel in only or [p.relative_to(template) for p in template.glob("*/*/*") if p.is_dir()]:
        copy_dataset(template / rel, dst / rel)
    return dst


# --------------------------------------------------------------------------
# the four groups, one after the other on one tree
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def group_runs(tree_template, tmp_path_factory, luigid_server):
    """date, recent, file, all, then date again; each through luigid with max_parallel 2
    (the first with --workers 4). Returns the tree, the configurations, each run's
    result and summary, and the datasets reduced on disk after each run."""
    work = tmp_path_factory.mktemp("groups")
    root = copy_tree(tree_template, work / "reduction")
    log_dir = work / "logs"
    start = min(frame_dates(root / "T-A/sinistro/ip"))
    end = min(frame_dates(root / "T-A/sinistro/gp"))
    listing = work / "reduce_datasets.txt"
    listing.write_text("# datasets to redo\nT-A/qhy/ip\n\nT-B/sinistro/gp\nT-B/sinistro/gp\nT-B/qhy/rp\n"
                       "T-X/sinistro/ip\n../../outside\n")
    configs = {
        "date": write_config(work / "date.yaml", root, log_dir,
                             {"group": "date", "start_date": str(start), "end_date": str(end), "ndays": 0}),
        "recent": write_config(work / "recent.yaml", root, log_dir,
                               {"group": "recent", "ndays": 5, "start_date": str(start), "end_date": str(end)}),
        "file": write_config(work / "file.yaml", root, log_dir, {"group": "file", "file": str(listing)}),
        "all": write_config(work / "all.yaml", root, log_dir, {"group": "all"}),
    }
    steps = [("date", ["--workers", "4"]), ("recent", []), ("file", []), ("all", []), ("date", [])]
    results = []
    for group, extra in steps:
        done = run_manager(configs[group], *luigid_server.scheduler_args(), *extra)
        results.append({"group": group, "result": done, "summary": summaries(log_dir)[-1] if
                        (log_dir / RUNS_DIR).exists() else None, "on_disk": reduced_on_disk(root)})
    return {"root": root, "log_dir": log_dir, "configs": configs, "runs": results}


def check_run(run: dict) -> dict:
    done = run["result"]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return run["summary"]


def test_the_tree_has_what_the_groups_need(tree_template):
    found = {str(p.parent.relative_to(tree_template)) for p in tree_template.glob("*/*/*/reduction_config.yaml")}
    assert found == set(TREE) | {"T-B/spectral/ip"}
    assert len({r.split("/")[0] for r in TREE}) == 2 and len({r.split("/")[1] for r in TREE}) == 2
    assert len({r.split("/")[2] for r in TREE}) == 2
    assert DATE_GROUP.isdisjoint(RECENT_GROUP) and DATE_GROUP.isdisjoint(FILE_GROUP)


def test_date_group_reduces_exactly_the_datasets_observed_in_the_range(group_runs):
    summary = check_run(group_runs["runs"][0])
    assert set(o["dataset"]["name"] for o in summary["outcomes"]) == DATE_GROUP
    assert by_status(summary, "reduced") == DATE_GROUP
    assert group_runs["runs"][0]["on_disk"] == DATE_GROUP
    assert summary["headers_read"] > 0            # nothing reduced yet: headers were read
    assert any("T-B/qhy/rp: no reduction_config.yaml" in p for p in summary["problems"])


def test_recent_group_reduces_exactly_the_datasets_of_the_last_ndays(group_runs):
    summary = check_run(group_runs["runs"][1])
    assert by_status(summary, "reduced") == RECENT_GROUP
    assert {o["dataset"]["name"] for o in summary["outcomes"]} == RECENT_GROUP   # the dates were overridden
    assert group_runs["runs"][1]["on_disk"] == DATE_GROUP | RECENT_GROUP


def test_file_group_reduces_the_listed_datasets_and_reports_bad_lines(group_runs):
    summary = check_run(group_runs["runs"][2])
    assert {o["dataset"]["name"] for o in summary["outcomes"]} == FILE_GROUP
    assert by_status(summary, "reduced") == FILE_GROUP
    assert group_runs["runs"][2]["on_disk"] == DATE_GROUP | RECENT_GROUP | FILE_GROUP
    problems = "\n".join(summary["problems"])
    assert "'T-B/qhy/rp': no reduction_config.yaml" in problems
    assert "'T-X/sinistro/ip': does not exist" in problems
    assert "'../../outside': resolves to" in problems and "outside data_reduction_dir" in problems
    log = (group_runs["log_dir"] / MANAGER_LOG_NAME).read_text()
    assert "'../../outside': resolves to" in log


def test_all_group_selects_every_dataset_and_reduces_only_what_is_not_done(group_runs):
    summary = check_run(group_runs["runs"][3])
    assert {o["dataset"]["name"] for o in summary["outcomes"]} == set(TREE)
    assert by_status(summary, "reduced") == {"T-B/qhy/gp"}
    assert by_status(summary, "up_to_date") == set(TREE) - {"T-B/qhy/gp"}
    assert group_runs["runs"][3]["on_disk"] == set(TREE)
    for rel in TREE:   # every dataset was reduced exactly once over the five runs
        assert finished_runs(group_runs["root"] / rel) == 1, rel


def test_date_group_again_uses_the_records_and_reduces_nothing(group_runs):
    summary = check_run(group_runs["runs"][4])
    assert by_status(summary, "up_to_date") == DATE_GROUP and summary["counts"]["reduced"] == 0
    assert summary["headers_read"] == 0


def test_manager_log_records_each_run_with_counts_and_reasons(group_runs):
    log = (group_runs["log_dir"] / MANAGER_LOG_NAME).read_text()
    runs = [s["run_id"] for s in summaries(group_runs["log_dir"])]
    assert len(runs) == 5
    for run_id in runs:
        assert f"[{run_id}] ========== manager run {run_id}" in log
        assert f"[{run_id}] run {run_id} finished in" in log
    assert "8 datasets selected: 1 reduced, 7 up to date, 0 skipped, 0 failed" in log
    assert "T-A/sinistro/gp: reduced in" in log


def test_the_night_overview_lists_every_dataset_of_the_run_with_links_that_resolve(group_runs, chromium):
    """log_dir/index.html, rewritten by the last run (the date group again: all up to date),
    opened in a real browser: one row per dataset of that run, each linking to the
    dataset's own page, which opens and names its target."""
    summary = check_run(group_runs["runs"][-1])
    index = group_runs["log_dir"] / INDEX_NAME
    visit = chromium.visit(index.as_uri(), """return {run: document.getElementById('run-id').textContent,
        rows: Array.from(document.querySelectorAll('#datasets tr.dataset-row')).map(tr => ({
            name: tr.querySelector('.dataset').dataset.dataset, status: tr.querySelector('.status').textContent,
            href: (tr.querySelector('.dataset a') || {}).href || null, points: tr.cells[4].textContent}))};""")
    assert visit.errors == []
    assert visit.value["run"] == summary["run_id"]
    rows = {r["name"]: r for r in visit.value["rows"]}
    assert set(rows) == {o["dataset"]["name"] for o in summary["outcomes"]} == DATE_GROUP
    root = group_runs["root"]
    for name, row in rows.items():
        target, _, filt = name.split("/")
        assert row["status"] == "up to date"
        page = Path(unquote(urlparse(row["href"]).path))
        assert page == root / name / f"{target}_{filt}_report.html" and page.is_file()
        lc = Table.read(root / name / f"{target}_{filt}_lc.ecsv", format="ascii.ecsv")
        assert row["points"].startswith(f"{len(lc)} ")
        opened = chromium.visit(row["href"], "return document.getElementById('target-name').textContent;")
        assert opened.errors == [] and opened.value == target


def test_max_parallel_is_never_exceeded(group_runs, luigid_server):
    # The first run: 3 datasets, max_parallel 2, --workers 4.
    summary = check_run(group_runs["runs"][0])
    assert max_overlap(run_intervals(summary)) == 2      # two at once did happen ...
    intervals = history_intervals(luigid_server, group_runs["root"])
    assert len(intervals) == len(TREE)                    # one per dataset over the five runs
    assert max_overlap(intervals) <= 2                    # ... and never more, in the scheduler's view


def test_task_history_database_has_the_runs(group_runs, luigid_server):
    configs = [str(p) for p in group_runs["configs"].values()]
    managers = luigid_server.history(
        "SELECT p.value, count(*) FROM tasks t JOIN task_parameters p ON p.task_id = t.id AND p.name = 'config' "
        "JOIN task_events e ON e.task_id = t.id AND e.event_name = 'DONE' "
        "WHERE t.name = 'ReductionManager' GROUP BY p.value")
    assert {c: n for c, n in managers if c in configs} == {c: (2 if c.endswith("date.yaml") else 1) for c in configs}
    prefix = f"{group_runs['root'].resolve()}/"
    for stage in ("ReduceDataset", "LockDataset", "BuildCatalogue", "MeasureImage", "BuildLightcurve",
                  "ReleaseLock"):
        datasets = luigid_server.history(
            "SELECT count(DISTINCT p.value) FROM tasks t JOIN task_parameters p ON p.task_id = t.id "
            "AND p.name = 'red_dir' WHERE t.name = ? AND substr(p.value, 1, ?) = ?", stage, len(prefix), prefix)
        assert datasets[0][0] == len(TREE), stage
    status, page = luigid_server.get("/history/by_name/ReduceDataset")
    assert status == 200 and str(group_runs["root"] / "T-B/qhy/gp") in page


def test_progress_and_status_messages_are_visible_through_luigid(group_runs, luigid_server):
    red = (group_runs["root"] / "T-A/sinistro/ip").resolve()
    record = read_json(red / RECORD_NAME)
    measured = [name for name, f in record["frames"].items() if not f["rejected"]]
    assert measured
    for name in measured:
        task_id = MeasureImage(red_dir=str(red), run_id=record["run_id"], image=name).task_id
        assert luigid_server.api("get_task_progress_percentage", task_id=task_id)["progressPercentage"] == 100
        assert luigid_server.api("get_task_status_message", task_id=task_id)["statusMessage"] == f"{name}: done"
    lc = BuildLightcurve(red_dir=str(red), run_id=record["run_id"]).task_id
    assert luigid_server.api("get_task_progress_percentage", task_id=lc)["progressPercentage"] == 100
    assert luigid_server.api("get_task_status_message", task_id=lc)["statusMessage"] == "writing products"
    manager = ReductionManager(config=str(group_runs["configs"]["all"])).task_id
    listed = luigid_server.api("task_list", status="DONE", upstream_status="", search="ReductionManager")
    assert listed[manager]["status_message"] == "8 datasets selected: 1 reduced, 7 up to date, 0 skipped, 0 failed"
    assert listed[manager]["progress_percentage"] == 100


# --------------------------------------------------------------------------
# locks and failures
# --------------------------------------------------------------------------


def test_locked_datasets_are_skipped_stale_locks_taken_over_and_failures_reported(tree_template, tmp_path,
                                                                                   luigid_server):
    root = copy_tree(tree_template, tmp_path / "reduction",
                     ["T-A/sinistro/ip", "T-B/qhy/ip", "T-A/qhy/ip", "T-B/qhy/gp"])
    live, remote, stale, broken = (root / r for r in ("T-A/sinistro/ip", "T-B/qhy/ip", "T-A/qhy/ip", "T-B/qhy/gp"))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        lock.acquire(live, "live-run", pid=sleeper.pid)
        (remote / lock.LOCK_NAME).write_text(json.dumps({
            "host": "other-" + socket.gethostname(), "pid": 4242, "pid_start": None, "user": "ana",
            "started_utc": "2026-11-01T00:00:00Z", "run_id": "remote-run"}) + "\n")
        lock.acquire(stale, "crashed-run", pid=gone.pid)
        gone.kill()
        gone.wait()
        (broken / "reduction_config.yaml").write_text("target: {name: 'T-B', RA: '25:00:00', Dec: '-29:00:00'}\n"
                                                      "photometry: {aperture_arcsec: 2.0}\ntom: {upload: false}\n")
        before = {red: ((red / lock.LOCK_NAME).read_bytes(), (red / lock.LOCK_NAME).stat().st_mtime_ns)
                  for red in (live, remote)}
        config = write_config(tmp_path / "all.yaml", root, tmp_path / "logs", {"group": "all"})
        done = run_manager(config, *luigid_server.scheduler_args())
        after = {red: ((red / lock.LOCK_NAME).read_bytes(), (red / lock.LOCK_NAME).stat().st_mtime_ns)
                 for red in (live, remote)}
    finally:
        sleeper.kill()
        sleeper.wait()
    assert done.returncode == 30, done.stdout[-3000:] + done.stderr[-3000:]   # something failed
    assert after == before                                                      # locks left alone
    assert not (live / RECORD_NAME).exists() and not (remote / RECORD_NAME).exists()
    summary = summaries(tmp_path / "logs")[-1]
    outcomes = {o["dataset"]["name"]: o for o in summary["outcomes"]}
    assert outcomes["T-A/sinistro/ip"]["status"] == "skipped" and "live-run" in outcomes["T-A/sinistro/ip"]["reason"]
    assert outcomes["T-B/qhy/ip"]["status"] == "skipped"
    assert "remote-run" in outcomes["T-B/qhy/ip"]["reason"] and "cannot be checked" in outcomes["T-B/qhy/ip"]["reason"]
    assert outcomes["T-A/qhy/ip"]["status"] == "reduced"                       # stale: taken over
    assert not (stale / lock.LOCK_NAME).exists() and "took over a stale lock" in (stale / LOG_NAME).read_text()
    assert outcomes["T-B/qhy/gp"]["status"] == "failed" and "target.RA '25:00:00'" in outcomes["T-B/qhy/gp"]["reason"]
    log = (tmp_path / "logs" / MANAGER_LOG_NAME).read_text()
    assert "4 datasets selected: 1 reduced, 0 up to date, 2 skipped, 1 failed" in log
    assert "T-A/sinistro/ip: skipped: locked: being reduced by run live-run" in log
    assert "T-B/qhy/gp: FAILED" in log and "target.RA '25:00:00'" in log
    assert "1 of 4 selected datasets failed (T-B/qhy/gp)" in done.stdout + done.stderr
    overview = overview_rows(tmp_path / "logs" / INDEX_NAME)
    assert overview["T-B/qhy/gp"][1].startswith("FAILED") and "target.RA '25:00:00'" in overview["T-B/qhy/gp"][7]
    assert overview["T-A/sinistro/ip"][1].startswith("skipped") and "live-run" in overview["T-A/sinistro/ip"][7]
    assert overview["T-A/qhy/ip"][1].startswith("reduced")


# --------------------------------------------------------------------------
# two managers at once
# --------------------------------------------------------------------------


SIX = ["T-A/sinistro/ip", "T-A/sinistro/gp", "T-A/qhy/gp", "T-B/sinistro/ip", "T-B/sinistro/gp", "T-B/qhy/ip"]


def run_two_managers(root: Path, work: Path, *extra: str) -> tuple[list[dict], list[str]]:
    """Start a manager of group all and one of group file (the same datasets, listed in
    reverse) at the same moment; wait for both; return their summaries and outputs."""
    listing = work / "list.txt"
    listing.write_text("\n".join(reversed(SIX)) + "\n")
    configs = [write_config(work / "all.yaml", root, work / "logs-all", {"group": "all"}),
               write_config(work / "file.yaml", root, work / "logs-file", {"group": "file", "file": str(listing)})]
    procs = [start_manager(c, c.with_suffix(".out"), *extra) for c in configs]
    try:
        for p in procs:
            p.wait(timeout=900)
    finally:
        for p in procs:
            if p.poll() is None:   # timed out: stop it and the reductions it started
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    outputs = [c.with_suffix(".out").read_text() for c in configs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    return [summaries(work / "logs-all")[-1], summaries(work / "logs-file")[-1]], outputs


def check_exactly_once(root: Path, runs: list[dict]) -> None:
    reduced = [o["dataset"]["name"] for s in runs for o in s["outcomes"] if o["status"] == "reduced"]
    assert sorted(reduced) == sorted(SIX)                       # each dataset by exactly one manager
    for rel in SIX:
        assert finished_runs(root / rel) == 1, rel
        assert (root / rel / RECORD_NAME).exists() and not (root / rel / lock.LOCK_NAME).exists()
    for s in runs:
        assert s["counts"]["failed"] == 0
        assert {o["dataset"]["name"] for o in s["outcomes"]} == set(SIX)


def test_two_managers_on_one_luigid_reduce_each_dataset_once(tree_template, tmp_path, luigid_server):
    root = copy_tree(tree_template, tmp_path / "reduction", SIX)
    runs, _ = run_two_managers(root, tmp_path, *luigid_server.scheduler_args())
    check_exactly_once(root, runs)
    # max_parallel 2 each, one luigid: the resource caps both managers together at 2
    assert max_overlap(history_intervals(luigid_server, root)) <= 2
    assert max_overlap(run_intervals(runs[0]) + run_intervals(runs[1])) <= 2


def test_two_managers_without_a_shared_scheduler_are_kept_apart_by_the_lock(tree_template, tmp_path):
    # Like two machines that share the filesystem but not a luigid.
    root = copy_tree(tree_template, tmp_path / "reduction", SIX)
    runs, _ = run_two_managers(root, tmp_path, "--local-scheduler")
    check_exactly_once(root, runs)
    for s in runs:   # a dataset skipped because the other manager held it says so
        for o in s["outcomes"]:
            assert o["status"] != "skipped" or "being reduced by" in o["reason"], o


# --------------------------------------------------------------------------
# ReduceDataset under a manager, in this process
# --------------------------------------------------------------------------


@pytest.fixture
def local_scheduler_config():
    """ReduceDataset's nested build takes its scheduler from the luigi configuration (the
    `luigi` command line sets it there); in this process, say 'local'."""
    cfg = luigi.configuration.get_config()
    if not cfg.has_section("core"):
        cfg.add_section("core")
    old = cfg.get("core", "local_scheduler", None)
    cfg.set("core", "local_scheduler", "true")
    yield
    if old is None:
        cfg.remove_option("core", "local_scheduler")
    else:
        cfg.set("core", "local_scheduler", old)


class _BlindOnce:
    """The lock module, except that the first read_lock sees no lock: as if another
    reduction took the lock just after ReduceDataset's own quick check."""

    def __init__(self):
        self.blind = True

    def __getattr__(self, name):
        return getattr(lock, name)

    def read_lock(self, red_dir):
        if self.blind:
            self.blind = False
            return None
        return lock.read_lock(red_dir)


def test_a_lock_lost_after_the_quick_check_is_a_skip_not_a_failure(tree_template, tmp_path, monkeypatch,
                                                                   local_scheduler_config):
    import luigi_phot.tasks.reduce as reduce_module

    red = copy_dataset(tree_template / "T-B/qhy/ip", tmp_path / "ip").resolve()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        lock.acquire(red, "winner-run", pid=sleeper.pid)
        held = (red / lock.LOCK_NAME).read_bytes()
        monkeypatch.setattr(reduce_module, "dataset_lock", _BlindOnce())
        outcome = tmp_path / "outcome.json"
        result = luigi.build([ReduceDataset(red_dir=str(red), if_locked="skip", dataset_workers=1,
                                            outcome_file=str(outcome))],
                             local_scheduler=True, workers=1, detailed_summary=True, no_lock=True)
        assert (red / lock.LOCK_NAME).read_bytes() == held
    finally:
        sleeper.kill()
        sleeper.wait()
    assert result.status == luigi.LuigiStatusCode.SUCCESS
    data = json.loads(outcome.read_text())
    assert data["status"] == "skipped" and "winner-run" in data["reason"]
    assert data["started_unix"] <= data["finished_unix"]
    assert not (red / RECORD_NAME).exists()


def test_a_dataset_reduced_since_it_was_scheduled_is_not_reduced_again(group_runs, tmp_path, monkeypatch,
                                                                     local_scheduler_config):
    red = copy_dataset(group_runs["root"] / "T-B/qhy/ip", tmp_path / "ip").resolve()
    record = (red / RECORD_NAME).read_bytes()
    monkeypatch.setattr(ReduceDataset, "complete", lambda self: False)   # not yet done when scheduled
    outcome = tmp_path / "outcome.json"
    result = luigi.build([ReduceDataset(red_dir=str(red), if_locked="skip", dataset_workers=1,
                                        outcome_file=str(outcome))],
                         local_scheduler=True, workers=1, detailed_summary=True, no_lock=True)
    assert result.status == luigi.LuigiStatusCode.SUCCESS
    assert json.loads(outcome.read_text())["status"] == "up_to_date"
    assert (red / RECORD_NAME).read_bytes() == record and finished_runs(red) == 1
