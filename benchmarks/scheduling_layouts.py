"""How many datasets hold their lock at once, in two ways of laying a reduction out on
Luigi, through a real luigid: the evidence for the layout docs/manager.md describes.

    .venv/bin/python benchmarks/scheduling_layouts.py [--datasets 10] [--limit 2] [--workers 10]

Each toy dataset is a chain Lock -> 3 frames (1 s each) -> Release, like a reduction;
its "lock" lasts from Lock's run to Release's. The dataset resource has limit `--limit`.

- ``dependencies``: ReduceDataset holds one unit of the resource and yields its chain
  as dynamic dependencies (the natural Luigi graph). Yielding puts the task back to
  PENDING, which gives its unit back while the chain runs.
- ``beneath``: ReduceDataset holds its unit and runs its chain beneath itself
  (luigi_phot.tasks.scheduling.run_beneath), as luigi_phot does.

Prints, for each layout, the most datasets locked at once and whether luigid's
dependency graph of the top task reaches every frame. Takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import luigi

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
RESOURCE = "layout_dataset"


class _Stage(luigi.Task):
    root = luigi.Parameter()
    dataset = luigi.Parameter()

    def path(self, name: str) -> Path:
        return Path(self.root) / self.dataset / name

    def event(self, kind: str) -> None:
        with open(Path(self.root) / "events.jsonl", "a") as fh:
            fh.write(json.dumps([self.dataset, kind, time.time()]) + "\n")

    def done(self) -> None:
        self.path(f"{self.task_family}-{getattr(self, 'frame', '')}").parent.mkdir(parents=True, exist_ok=True)
        self.path(f"{self.task_family}-{getattr(self, 'frame', '')}").write_text("done")

    def complete(self):
        return self.path(f"{self.task_family}-{getattr(self, 'frame', '')}").exists()


class Lock(_Stage):
    def run(self):
        self.event("lock")
        self.done()


class Frame(_Stage):
    frame = luigi.IntParameter()

    def requires(self):
        return Lock(self.root, self.dataset)

    def run(self):
        time.sleep(1.0)
        self.done()


class Release(_Stage):
    def requires(self):
        return [Frame(self.root, self.dataset, k) for k in range(3)]

    def run(self):
        self.event("release")
        self.done()


class ReduceByDependencies(_Stage):
    resources = {RESOURCE: 1}

    def run(self):
        yield Release(self.root, self.dataset)
        self.done()


class ReduceBeneath(_Stage):
    resources = {RESOURCE: 1}

    def run(self):
        from luigi_phot.tasks.scheduling import run_beneath

        run_beneath(self, [Release(self.root, self.dataset)], workers=3)
        self.done()


class Datasets(luigi.WrapperTask):
    root = luigi.Parameter()
    n = luigi.IntParameter()
    layout = luigi.ChoiceParameter(choices=["dependencies", "beneath"])

    def requires(self):
        task = ReduceByDependencies if self.layout == "dependencies" else ReduceBeneath
        return [task(self.root, f"ds{k:02d}") for k in range(self.n)]


def most_locked_at_once(events_file: Path) -> int:
    events = sorted((json.loads(line) for line in events_file.read_text().splitlines()),
                    key=lambda e: (e[2], e[1] == "lock"))
    now = peak = 0
    for _, kind, _ in events:
        now += 1 if kind == "lock" else -1
        peak = max(peak, now)
    return peak


def run_layout(layout: str, args, luigid, work: Path) -> dict:
    root = work / layout
    root.mkdir()
    luigid.api("update_resource", resource=RESOURCE, amount=args.limit)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)])}
    t0 = time.perf_counter()
    done = subprocess.run([str(BIN / "luigi"), "--module", "scheduling_layouts", "Datasets", "--root", str(root),
                           "--n", str(args.datasets), "--layout", layout, "--workers", str(args.workers),
                           *luigid.scheduler_args()], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"{layout}: exit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    top = next(t for t, v in luigid.api("task_list", status="", upstream_status="", search="Datasets").items()
               if v["params"].get("root") == str(root))
    graph = luigid.api("dep_graph", task_id=top)
    frames = sum(v["name"] == "Frame" for v in graph.values())
    return {"layout": layout, "datasets": args.datasets, "limit": args.limit, "workers": args.workers,
            "most_locked_at_once": most_locked_at_once(root / "events.jsonl"),
            "frames_in_graph": frames, "frames": 3 * args.datasets, "wall_s": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=10)
    parser.add_argument("--limit", type=int, default=2, help="the dataset resource's limit (max_parallel)")
    parser.add_argument("--workers", type=int, default=10, help="the luigi command's --workers")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from tests.luigid_server import running_luigid

    with tempfile.TemporaryDirectory(prefix="scheduling_layouts_") as work, running_luigid() as luigid:
        for layout in ("dependencies", "beneath"):
            result = run_layout(layout, args, luigid, Path(work))
            print(json.dumps(result))
            print(f"  {layout}: at most {result['most_locked_at_once']} of {args.datasets} datasets locked at once "
                  f"(limit {args.limit}); luigid's graph of the top task reaches {result['frames_in_graph']} of "
                  f"{result['frames']} frames", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
