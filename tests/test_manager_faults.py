"""ReductionManager faults, through the real `luigi` command on a small generated tree:

- a dataset list naming places outside data_reduction_dir (a symlink leading out,
  a ``../`` path, an absolute path) or nothing at all: each entry refused in one
  line of ``arcon_pipeline.log``, the valid entries reduced, nothing outside touched;
- luigid killed (-9) and started again in the middle of a manager run;
- the manager itself killed (-9, its whole process group) in the middle of a run.

After each fault a second manager run finishes, and no dataset is reduced twice:
each frame has exactly one "measured" line in its dataset's aperture_pipeline.log
over both runs, and every measurement file made before the fault keeps its inode
and modification time. Locks the killed run left are taken over as stale (a
warning in the dataset's log). Every process a test starts runs in its own
process group, bounded in time, and is killed by its pid at the end.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pytest

from luigi_phot import dataset_lock as lock
from luigi_phot.dataset import LOG_NAME, RECORD_NAME
from luigi_phot.run_log import MANAGER_LOG_NAME
from luigi_phot.synthetic import SyntheticConfig, generate_dataset
from tests.conftest import LUIGI, copy_dataset
from tests.fault_tools import (Luigid, LuigiRun, assert_no_traceback, console, log_lines, log_runs,
                               measured_lines, measurements, temporaries, wait_for)
from tests.test_manager import SMALL, TODAY, copy_tree, finished_runs, night_field_ra, summaries
from tests.test_manager_selection import write_config
from tests.tom_server import free_port

pytestmark = pytest.mark.slow

THREE = ["T-A/sinistro/ip", "T-A/sinistro/gp", "T-B/sinistro/ip"]
RUN_TIMEOUT_S = 240
STALE = "took over a stale lock"


@pytest.fixture(scope="module")
def tree_template(tmp_path_factory) -> Path:
    """Three small datasets (4 frames of 256x256 pixels, 300 stars)."""
    root = tmp_path_factory.mktemp("manager_faults") / "reduction"
    night = TODAY - dt.timedelta(days=10)
    for seed, rel in enumerate(THREE, 60):
        target, _, filt = rel.split("/")
        generate_dataset(root / rel, SyntheticConfig(seed=seed, first_night=night.isoformat(), n_nights=1,
                                                     field_ra_deg=night_field_ra(night), target_name=target,
                                                     filter_name=filt, **SMALL))
        for name in ("synthetic_truth.ecsv", "synthetic_stars.ecsv"):
            (root / rel / name).unlink()
    return root


class Manager(LuigiRun):
    """`luigi --module luigi_phot ReductionManager --config C extra` in its own process group."""

    def __init__(self, config: Path, out_dir: Path, *extra: str, env: dict | None = None):
        super().__init__([str(LUIGI), "--module", "luigi_phot", "ReductionManager", "--config", str(config), *extra],
                         cwd=config.parent, out_dir=out_dir, env=env)

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> "Manager":
        return super().wait(timeout)


def frames_of(red: Path) -> list[str]:
    return sorted(p.name for p in red.iterdir() if p.name.endswith((".fits", ".fits.fz")))


def any_frame_measured(root: Path, rels):
    def seen():
        return any(measured_lines(root / rel) for rel in rels)
    seen.__name__ = "a frame measured"
    return seen


def snapshot(top: Path) -> dict[str, tuple]:
    """Every file and directory under top: kind, size, mtime, mode (and link targets)."""
    out = {}
    for p in sorted([top, *top.rglob("*")]):
        st = p.lstat()
        out[str(p.relative_to(top))] = (p.is_symlink() and os.readlink(p), p.is_dir(), st.st_size,
                                        st.st_mtime_ns, st.st_mode)
    return out


def assert_each_frame_measured_once(root: Path, rels, done_before: dict[str, dict]) -> None:
    """Every dataset finished; over all runs each frame was measured exactly once; the
    measurement files made before the fault were not redone."""
    for rel in rels:
        red = root / rel
        assert (red / RECORD_NAME).is_file(), rel
        assert not (red / lock.LOCK_NAME).exists(), rel
        assert temporaries(red) == [], rel
        assert measured_lines(red) == {f: 1 for f in frames_of(red)}, (rel, measured_lines(red))
        after = measurements(red)
        assert all(after[name] == ident for name, ident in done_before[rel].items()), rel
        assert finished_runs(red) == 1, rel


# --------------------------------------------------------------------------
# The dataset list: confined to data_reduction_dir
# --------------------------------------------------------------------------


def test_dataset_list_entries_leading_outside_are_refused_and_nothing_outside_is_touched(tree_template, tmp_path):
    root = copy_tree(tree_template, tmp_path / "reduction", ["T-A/sinistro/ip", "T-B/sinistro/ip"])
    elsewhere = tmp_path / "elsewhere"
    outside = copy_dataset(tree_template / "T-A/sinistro/gp", elsewhere / "T-C/sinistro/ip")   # a real dataset
    (root / "T-A/sinistro/out").symlink_to(outside, target_is_directory=True)
    before = snapshot(elsewhere)
    listing = tmp_path / "reduce_datasets.txt"
    bad = {  # entry -> what its one line must say
        "T-A/sinistro/out": f"resolves to {outside} (through a symbolic link), outside data_reduction_dir",
        "../elsewhere/T-C/sinistro/ip": f"resolves to {outside}, outside data_reduction_dir",
        str(outside): f"resolves to {outside}, outside data_reduction_dir",
        "T-A/sinistro/missing": "does not exist",
    }
    listing.write_text("\n".join(["T-A/sinistro/ip", str(root / "T-B/sinistro/ip"), *bad]) + "\n")
    config = write_config(tmp_path / "file.yaml", root, tmp_path / "logs", {"group": "file", "file": str(listing)})

    done = Manager(config, tmp_path / "run1", "--local-scheduler").wait()

    assert done.returncode == 0, console(done)[-4000:]
    assert_no_traceback(done)
    summary = summaries(tmp_path / "logs")[-1]
    assert {o["dataset"]["name"]: o["status"] for o in summary["outcomes"]} == {
        "T-A/sinistro/ip": "reduced", "T-B/sinistro/ip": "reduced"}
    assert len(summary["problems"]) == len(bad)
    log = (tmp_path / "logs" / MANAGER_LOG_NAME).read_text().splitlines()
    for number, (entry, reason) in enumerate(bad.items(), 3):
        lines = [ln for ln in log if f"{listing}, line {number} {entry!r}: " in ln]
        assert len(lines) == 1, (entry, lines)
        assert " WARNING " in lines[0] and reason in lines[0] and lines[0].endswith(": skipped"), lines[0]
        assert f"[{summary['run_id']}]" in lines[0]
    print("\n".join(ln for ln in log if "line " in ln))
    # nothing outside data_reduction_dir was read for reduction, locked or written
    assert snapshot(elsewhere) == before
    assert not (outside / LOG_NAME).exists() and not (outside / lock.LOCK_NAME).exists()
    assert not (outside / "photometry").exists() and not (outside / RECORD_NAME).exists()
    for rel in ("T-A/sinistro/ip", "T-B/sinistro/ip"):
        assert (root / rel / RECORD_NAME).is_file() and finished_runs(root / rel) == 1


# --------------------------------------------------------------------------
# luigid restarted, the manager killed
# --------------------------------------------------------------------------


def test_luigid_restarted_mid_run_then_a_rerun_finishes_without_reducing_twice(tree_template, tmp_path):
    root = copy_tree(tree_template, tmp_path / "reduction", THREE)
    config = write_config(tmp_path / "all.yaml", root, tmp_path / "logs", {"group": "all"})
    cfg = tmp_path / "luigi.cfg"   # the workers wait for luigid to come back rather than give up at once
    cfg.write_text("[core]\nrpc-retry-attempts = 30\nrpc-retry-wait = 1\n")
    env = {"LUIGI_CONFIG_PATH": str(cfg)}
    scheduler = Luigid(tmp_path / "luigid", free_port()).start()
    first = None
    try:
        first = Manager(config, tmp_path / "run1", *scheduler.scheduler_args(), env=env)
        wait_for(any_frame_measured(root, THREE), timeout=RUN_TIMEOUT_S, proc=first)
        scheduler.kill()
        scheduler.start()
        first.wait()
        assert_no_traceback(first)
        summary = summaries(tmp_path / "logs")[-1]
        print(f"run 1 exit {first.returncode}: {summary['counts']}")
        assert first.returncode in (0, 30), console(first)[-4000:]
        if first.returncode == 30:   # failed cleanly: each failure said why, in one line; no lock kept
            failed = [o for o in summary["outcomes"] if o["status"] == "failed"]
            assert failed and all(o["reason"] and "\n" not in o["reason"] for o in failed), failed
            print("\n".join(f"{o['dataset']['name']}: {o['reason']}" for o in failed))
        for rel in THREE:
            holder = lock.read_lock(root / rel)
            assert holder is None or lock.holder_state(holder) == "dead", (rel, holder)
        done_before = {rel: measurements(root / rel) for rel in THREE}

        second = Manager(config, tmp_path / "run2", *scheduler.scheduler_args(), env=env).wait()
    finally:
        if first is not None:
            first.kill()
        scheduler.kill()
    assert second.returncode == 0, console(second)[-4000:]
    assert_no_traceback(second)
    rerun = summaries(tmp_path / "logs")[-1]
    assert rerun["counts"]["failed"] == 0 and rerun["counts"]["skipped"] == 0, rerun["counts"]
    assert_each_frame_measured_once(root, THREE, done_before)


def test_manager_killed_mid_run_then_a_rerun_takes_the_locks_over_and_reduces_nothing_twice(tree_template,
                                                                                            tmp_path):
    root = copy_tree(tree_template, tmp_path / "reduction", THREE)
    config = write_config(tmp_path / "all.yaml", root, tmp_path / "logs", {"group": "all"})
    first = Manager(config, tmp_path / "run1", "--local-scheduler")
    try:
        wait_for(any_frame_measured(root, THREE), timeout=RUN_TIMEOUT_S, proc=first)
    finally:
        first.kill()
    left = {rel: lock.read_lock(root / rel) for rel in THREE if (root / rel / lock.LOCK_NAME).exists()}
    assert left, "the kill must land while datasets are being reduced"
    assert all(lock.holder_state(holder) == "dead" for holder in left.values())
    assert not any((root / rel / RECORD_NAME).exists() for rel in left)
    done_before = {rel: measurements(root / rel) for rel in THREE}
    print(f"killed with {len(left)} dataset(s) locked: {', '.join(sorted(left))}; "
          f"frames measured: {sum(map(len, done_before.values()))}")

    second = Manager(config, tmp_path / "run2", "--local-scheduler").wait()
    assert second.returncode == 0, console(second)[-4000:]
    assert_no_traceback(second)
    rerun = summaries(tmp_path / "logs")[-1]
    assert rerun["counts"] == {"reduced": 3, "up_to_date": 0, "skipped": 0, "failed": 0}, rerun["counts"]
    for rel, holder in left.items():   # each lock of the killed run taken over once, with a warning
        last = log_runs(root / rel)[-1]
        taken = [ln for ln in last if STALE in ln]
        assert len(taken) == 1 and " WARNING " in taken[0] and holder.run_id in taken[0], last[:5]
    for rel in set(THREE) - set(left):
        assert not any(STALE in ln for ln in log_lines(root / rel)), rel
    assert_each_frame_measured_once(root, THREE, done_before)
    log = (tmp_path / "logs" / MANAGER_LOG_NAME).read_text()
    run_id = rerun["run_id"]
    assert re.search(rf"\[{run_id}\] run {run_id} finished in [0-9.]+ s: 3 datasets selected: 3 reduced, 0 up to date, "
                     "0 skipped, 0 failed", log)
