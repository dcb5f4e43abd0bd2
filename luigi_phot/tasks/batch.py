"""Reduce a list of datasets, at most max_parallel at once, and say how each ended.

:func:`reduce_datasets` is the ReductionManager's engine, and is meant for anything
else that decides which datasets to reduce (a watch mode calls it once per batch):

    outcomes = reduce_datasets(datasets, max_parallel=4, run_dir=log_dir / "manager_runs" / run_id,
                               supervisor=task)

Each dataset is reduced by ``ReduceDataset(red_dir, if_locked='skip')``, which
holds one unit of the scheduler resource ``luigi_phot_dataset`` while it runs;
the limit of that resource is set to max_parallel on the scheduler, so on one
luigid every caller shares the cap. A dataset found locked is skipped, a dataset
reduced by another run meanwhile is left alone, and a failed dataset never stops
the others. Run under a running task (`supervisor`), the reductions show on
luigid as its dependencies, and its progress counts the datasets that ended.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..dataset import read_json
from ..run_log import OUTCOMES, Outcome
from ..selection import Dataset, lock_skip_reason
from .reduce import DATASET_RESOURCE, ReduceDataset, dataset_is_current, preload_science
from .scheduling import ProgressWatcher, run_beneath

__all__ = ["reduce_datasets"]


def reduce_datasets(datasets: list[Dataset], max_parallel: int, run_dir: Path, *, supervisor=None,
                    note=None) -> dict[Dataset, Outcome]:
    """Reduce `datasets` (at most `max_parallel` at once) and return how each ended.

    `run_dir` receives one outcome record per dataset (``0000.json``, ...: written by
    its ReduceDataset). `supervisor` is the running Luigi task this is called from
    (or None), `note(text)` is told which scheduler is used. Datasets run in
    processes of their own, each with one worker for its stages; the scheduler is
    the `luigi` command's (luigid, or a local one)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tasks = {ds: ReduceDataset(red_dir=str(ds.red_dir), if_locked="skip", dataset_workers=1,
                               outcome_file=str(run_dir / f"{i:04d}.json"))
             for i, ds in enumerate(datasets)}
    preload_science()  # once here, not in every dataset's process
    watching = (ProgressWatcher(supervisor, lambda: _progress(run_dir, len(tasks))) if supervisor is not None
                else contextlib.nullcontext())
    with watching:
        run_beneath(supervisor, list(tasks.values()), workers=max_parallel, keep_alive=True,
                    separate_processes=True, resource_limits={DATASET_RESOURCE: max_parallel}, note=note)
    return {ds: outcome_of(ds, task) for ds, task in tasks.items()}


def _progress(run_dir: Path, n_datasets: int) -> tuple[int, str]:
    ended = sum(1 for _ in run_dir.glob("[0-9]*.json"))
    return int(100 * ended / max(n_datasets, 1)), f"{ended} of {n_datasets} dataset reductions ended"


def outcome_of(ds: Dataset, task: ReduceDataset) -> Outcome:
    """How the dataset's reduction ended, from its outcome record; when it wrote none
    (it never ran, or was killed), from the dataset itself."""
    data = read_json(Path(task.outcome_file))
    if data is not None and data.get("status") in OUTCOMES:
        return Outcome(ds, data["status"], str(data.get("reason") or ""), data.get("run_id"),
                       data.get("started_unix"), data.get("finished_unix"))
    reason = lock_skip_reason(ds.red_dir)
    if reason:
        return Outcome(ds, "skipped", f"{reason} (not started by this run)")
    if dataset_is_current(ds.red_dir):
        return Outcome(ds, "up_to_date", "reduced by another run during this one")
    return Outcome(ds, "failed", "not run, or stopped before it could say how it ended (was the scheduler "
                                 "restarted or unreachable, or the process killed?); run again to reduce it")
