"""Small tasks for tests/test_scheduling.py. A Supervisor holds one unit of a resource and
runs Top -> two Leafs beneath itself (luigi_phot.tasks.scheduling.run_beneath), like
ReduceDataset its stages; the leaves write what they saw of the scheduler while it ran.
A Batch runs Supervisors beneath itself, waiting for units as ReductionManager does."""

from __future__ import annotations

import json
import multiprocessing
import urllib.parse
import urllib.request
from pathlib import Path

import luigi
import luigi.worker

from luigi_phot.tasks.scheduling import run_beneath

#: The resource a supervisor holds.
SLOT = "toy_slot"


def scheduler_api(url: str, method: str, **data):
    query = urllib.parse.urlencode({"data": json.dumps(data)})
    with urllib.request.urlopen(f"{url}/api/{method}?{query}", timeout=30) as reply:
        return json.load(reply)["response"]


class Leaf(luigi.Task):
    out_dir = luigi.Parameter()
    name = luigi.Parameter()
    fail = luigi.BoolParameter()
    luigid_url = luigi.Parameter(default="")
    supervisor_id = luigi.Parameter(default="")

    def output(self):
        return luigi.LocalTarget(str(Path(self.out_dir) / f"{self.name}.json"))

    def run(self):
        if self.fail:
            raise RuntimeError(f"{self.name} fails on purpose")
        seen = {}
        if self.luigid_url:  # what luigid says of the supervisor while this runs beneath it
            listed = scheduler_api(self.luigid_url, "task_list", status="", upstream_status="",
                                   search="Supervisor")
            seen["supervisor_status"] = listed.get(self.supervisor_id, {}).get("status")
            used = {r["name"]: r["num_used"] for r in scheduler_api(self.luigid_url, "resource_list")}
            seen["slot_used"] = used.get(SLOT)
        with self.output().open("w") as fh:
            json.dump(seen, fh)


class Top(luigi.Task):
    out_dir = luigi.Parameter()
    fail = luigi.BoolParameter()
    luigid_url = luigi.Parameter(default="")
    supervisor_id = luigi.Parameter(default="")

    def requires(self):
        return [Leaf(self.out_dir, f"leaf{k}", self.fail and k == 1, self.luigid_url, self.supervisor_id)
                for k in range(2)]

    def output(self):
        return luigi.LocalTarget(str(Path(self.out_dir) / "top.json"))

    def run(self):
        with self.output().open("w") as fh:
            json.dump({}, fh)


class Supervisor(luigi.Task):
    out_dir = luigi.Parameter()
    fail = luigi.BoolParameter(description="a leaf beneath fails, and so does this task")
    luigid_url = luigi.Parameter(default="")
    resources = {SLOT: 1}
    retry_count = 1   # like a manager's ReduceDataset: disabled, not retried, when it fails

    def output(self):
        return luigi.LocalTarget(str(Path(self.out_dir) / "supervisor.json"))

    def run(self):
        forked = multiprocessing.parent_process() is not None
        inherited_lock_held = luigi.worker.fork_lock.locked()
        root = Top(self.out_dir, self.fail, self.luigid_url, self.task_id if self.luigid_url else "")
        succeeded = run_beneath(self, [root], workers=2, separate_processes=True)
        if not succeeded:
            raise RuntimeError("a task beneath failed")
        with self.output().open("w") as fh:
            json.dump({"supervisor_id": self.task_id, "forked": forked, "fork_lock_held_at_start": inherited_lock_held,
                       "succeeded": succeeded, "top_id": root.task_id,
                       "leaf_ids": [leaf.task_id for leaf in root.requires()]}, fh)


class Batch(luigi.Task):
    """A failing and a succeeding Supervisor beneath this task, one at a time (limit 1),
    the worker waiting for units as ReductionManager's does."""

    out_dir = luigi.Parameter()

    def complete(self):
        return False

    def run(self):
        supervisors = [Supervisor(str(Path(self.out_dir) / "bad"), True), Supervisor(str(Path(self.out_dir) / "ok"))]
        succeeded = run_beneath(self, supervisors, workers=2, keep_alive=True, separate_processes=True,
                                resource_limits={SLOT: 1})
        with open(Path(self.out_dir) / "batch.json", "w") as fh:
            json.dump({"succeeded": succeeded, "supervisor_ids": [s.task_id for s in supervisors]}, fh)
