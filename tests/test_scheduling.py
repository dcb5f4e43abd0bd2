"""luigi_phot.tasks.scheduling: the two Luigi behaviours it relies on that Luigi
offers no public API for, pinned on the real `luigi` command (and a real luigid):

1. a task's process is forked while ``luigi.worker.fork_lock`` is held, so the
   child inherits it held; a worker made in that child must still run (with
   separate processes of its own) and stop;
2. luigid records the dependencies sent for a task another worker is running,
   without changing its status or the resource units it holds: the visualiser's
   graph then shows what a supervisor runs beneath it.

The tasks are in tests/scheduling_toys.py (a supervisor holding one unit of a
resource runs Top -> two Leafs beneath itself).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import REPO, run_luigi
from tests.scheduling_toys import SLOT


def run_supervisor(out_dir: Path, *args: str) -> dict:
    """`luigi --module tests.scheduling_toys Supervisor --out-dir OUT --workers 2 ARGS`: the
    supervisor runs in a process of its own; returns what it wrote."""
    out_dir.mkdir()
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = run_luigi("--module", "tests.scheduling_toys", "Supervisor", "--out-dir", str(out_dir), "--workers", "2",
                     *args, env=env, cwd=out_dir, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out_dir / "supervisor.json").read_text())


def test_a_worker_made_in_a_forked_task_process_runs_and_stops(tmp_path):
    result = run_supervisor(tmp_path / "run", "--local-scheduler")
    # what is relied on: Luigi forked the supervisor with its fork_lock held ...
    assert result["forked"] and result["fork_lock_held_at_start"]
    # ... and what run_beneath does about it: the graph beneath ran, in processes of its own, and the
    # worker stopped (without the fresh lock this command would not end before the time-out)
    assert result["succeeded"]
    assert all((tmp_path / "run" / f"{name}.json").is_file() for name in ("leaf0", "leaf1", "top"))


def test_luigid_shows_what_a_running_task_runs_beneath_it_and_keeps_its_status_and_resources(tmp_path,
                                                                                             luigid_server):
    out = tmp_path / "run"
    assert luigid_server.api("update_resource", resource=SLOT, amount=1)   # so that resource_list shows it
    result = run_supervisor(out, "--luigid-url", luigid_server.url, *luigid_server.scheduler_args())
    assert result["succeeded"]
    # while the leaves ran beneath it, the supervisor was RUNNING and held its unit of the resource
    for leaf in ("leaf0", "leaf1"):
        seen = json.loads((out / f"{leaf}.json").read_text())
        assert seen == {"supervisor_status": "RUNNING", "slot_used": 1}, (leaf, seen)
    supervisor = result["supervisor_id"]
    graph = luigid_server.api("dep_graph", task_id=supervisor)
    assert graph[supervisor]["deps"] == [result["top_id"]]
    assert sorted(graph[result["top_id"]]["deps"]) == sorted(result["leaf_ids"])
    assert {graph[t]["status"] for t in [supervisor, result["top_id"], *result["leaf_ids"]]} == {"DONE"}


def test_a_supervisor_whose_graph_failed_is_disabled_and_its_waiting_batch_ends(tmp_path, luigid_server):
    # A worker that waits for resource units (keep_alive, as the manager's) would also wait
    # for a failed task's retry, for ever once the task's dependencies are gone: the
    # dependencies sent for the graph beneath must keep the supervisor's retry policy
    # (retry_count 1: disabled at its first failure), whatever luigid's default.
    out = tmp_path / "batch"
    out.mkdir()
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = run_luigi("--module", "tests.scheduling_toys", "Batch", "--out-dir", str(out),
                     *luigid_server.scheduler_args(), env=env, cwd=out, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    batch = json.loads((out / "batch.json").read_text())
    assert not batch["succeeded"]
    bad, ok = batch["supervisor_ids"]
    status = {t: luigid_server.api("dep_graph", task_id=t)[t]["status"] for t in (bad, ok)}
    assert status == {bad: "DISABLED", ok: "DONE"}
    beneath = luigid_server.api("dep_graph", task_id=bad)
    assert sorted(v["status"] for v in beneath.values() if v["name"] == "Leaf") == ["DONE", "FAILED"]
