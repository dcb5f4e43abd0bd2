"""ReductionManager: reduce many datasets at once through the scheduler.

    luigi --module luigi_phot ReductionManager --config reduction_manager_config.yaml

The selection, lock pre-check and run log are plain code in
:mod:`luigi_phot.selection` and :mod:`luigi_phot.run_log`; this task wires them to Luigi:

- it sets the scheduler's limit of the resource ``luigi_phot_dataset`` to
  ``max_parallel`` (luigid: the ``update_resource`` call; a local scheduler is
  made with that limit) and runs ``ReduceDataset(red_dir, if_locked='skip')``
  for every selected dataset that is neither locked nor up to date, in a
  nested build with ``max_parallel`` workers through the same scheduler.
  Each ReduceDataset holds one unit of the resource while it runs, so the
  scheduler never runs more than ``max_parallel`` at once, whatever
  ``--workers`` says and however many managers share it.
- Identical ReduceDataset tasks of two managers on one luigid are one task
  there (only one worker runs it); managers on different schedulers (or
  hosts) are kept apart by the dataset lock, and a dataset found locked is
  reported as skipped, never as failed.
- Each ReduceDataset writes how it ended to
  ``log_dir/manager_runs/<run id>/<n>.json``; the run's summary goes to
  ``arcon_pipeline.log`` and ``summary.json`` there. If any dataset failed,
  the task fails (exit status 30) after all the others have run.
"""

from __future__ import annotations

import getpass
import logging
import os
import random
import socket
import threading
import time
from pathlib import Path

import luigi
import luigi.interface
import luigi.scheduler
import luigi.worker

from .. import dataset_lock
from ..config import ConfigError, ManagerConfig, load_manager_config
from ..console import console_logger, nested_build
from ..dataset import read_json, write_json_atomic
from ..run_log import MANAGER_LOG_NAME, OUTCOMES, RUNS_DIR, ManagerLog, Outcome, count_line
from ..selection import Dataset, lock_skip_reason, select_datasets
from .base import Reporting, StageError, install_console_filter, user_errors
from .reduce import DATASET_RESOURCE, ReduceDataset, _preload_science, _release_inherited_fork_lock, \
    dataset_is_current

__all__ = ["ReductionManager"]

#: Between asks for datasets that wait for the scheduler's resource (randomised x1-2).
_RETRY_WAIT_S = 2.0


class _AbsolutePath(luigi.Parameter):
    """A file path made absolute, so that the task id (one per configuration file on
    luigid) does not depend on the directory the command was started from."""

    def normalize(self, x):
        return str(Path(os.path.expanduser(str(x))).absolute())


class _DatasetScheduling(luigi.interface._WorkerSchedulerFactory):
    """The nested build's scheduler and worker. The scheduler caps ReduceDataset at
    max_parallel through the resource; the worker runs each dataset in its own
    process and never keeps alive (a keep-alive worker would wait for retry_delay
    and run a failed dataset again)."""

    def __init__(self, max_parallel: int, note):
        self.max_parallel = max_parallel
        self.scheduler = None
        self._note = note

    def note(self, message: str) -> None:
        """Say once (the build may be repeated) which scheduler the datasets go to."""
        if self._note is not None:
            self._note(message)
            self._note = None

    def create_local_scheduler(self):
        resources = luigi.configuration.get_config().getintdict("resources")
        resources[DATASET_RESOURCE] = self.max_parallel
        self.scheduler = luigi.scheduler.Scheduler(prune_on_get_work=True, record_task_history=False,
                                                   resources=resources)
        self.note(f"scheduler: local (this process only); {DATASET_RESOURCE} limit {self.max_parallel}")
        return self.scheduler

    def create_remote_scheduler(self, url):
        self.scheduler = super().create_remote_scheduler(url)
        if not self.scheduler.update_resource(DATASET_RESOURCE, self.max_parallel):
            raise StageError(f"{url}: luigid refused to set the {DATASET_RESOURCE} limit to {self.max_parallel}")
        self.note(f"scheduler: luigid at {url}; {DATASET_RESOURCE} limit set to {self.max_parallel} "
                  "(shared by every run using it)")
        return self.scheduler

    def create_worker(self, scheduler, worker_processes, assistant=False):
        return luigi.worker.Worker(scheduler=scheduler, worker_processes=worker_processes, assistant=assistant,
                                   keep_alive=False, force_multiprocessing=True)


class _ProgressReporter(threading.Thread):
    """Shows on the manager task how many of its dataset reductions have ended."""

    def __init__(self, task: luigi.Task, run_dir: Path, n_datasets: int, interval_s: float = 2.0):
        super().__init__(daemon=True, name="manager-progress")
        self.task, self.run_dir, self.n, self.interval_s = task, run_dir, n_datasets, interval_s
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(self.interval_s):
            try:
                done = sum(1 for p in self.run_dir.glob("[0-9]*.json"))
                self.task.set_progress_percentage(int(100 * done / self.n))
                self.task.set_status_message(f"{done} of {self.n} dataset reductions ended")
            except Exception:  # progress is a courtesy: never disturb the run
                pass


class ReductionManager(Reporting, luigi.Task):
    """Select datasets (reduction manager configuration) and reduce them in parallel."""

    config = _AbsolutePath(description="reduction manager configuration (YAML; see "
                                       "luigi_phot/examples/manager_config.yaml)")

    def complete(self):
        return False  # each invocation is a new pass over the tree

    def on_failure(self, exception):
        if isinstance(exception, user_errors()):
            return str(exception)
        return super().on_failure(exception)

    def run(self):
        install_console_filter()
        cfg = load_manager_config(self.config)
        run_id = dataset_lock.new_run_id()
        try:
            log = ManagerLog(cfg.log_dir, run_id, echo=console_logger())
        except OSError as exc:
            raise StageError(f"{cfg.log_dir}: cannot write {MANAGER_LOG_NAME} there ({exc.strerror})") from None
        try:
            self._manage(cfg, log, run_id)
        except ConfigError as exc:
            log.error(f"stopped: {exc}")
            raise
        finally:
            log.close()

    def _manage(self, cfg: ManagerConfig, log: ManagerLog, run_id: str) -> None:
        t0 = time.perf_counter()
        run_dir = cfg.log_dir / RUNS_DIR / run_id
        log.info(f"========== manager run {run_id}: {getpass.getuser()} on {socket.gethostname()}, pid {os.getpid()}, "
                 f"configuration {cfg.path} ==========")
        log.info(f"data_reduction_dir {cfg.data_reduction_dir}; instruments {', '.join(cfg.instrument_list)}; "
                 f"max_parallel {cfg.max_parallel}")
        self.report_status("selecting datasets")
        selection = select_datasets(cfg)
        for problem in selection.problems:
            log.warning(problem)
        log.info(f"{selection.description}: {len(selection.datasets)} of {selection.n_found} datasets selected"
                 + (f" ({selection.headers_read} frame headers read)" if selection.headers_read else ""))
        if selection.datasets:
            log.info("selected: " + ", ".join(ds.name for ds in selection.datasets))

        outcomes: dict[Dataset, Outcome] = {}
        to_reduce = []
        for ds in selection.datasets:
            reason = lock_skip_reason(ds.red_dir)
            if reason:
                outcomes[ds] = Outcome(ds, "skipped", reason)
            elif dataset_is_current(ds.red_dir):
                outcomes[ds] = Outcome(ds, "up_to_date")
            else:
                to_reduce.append(ds)
        n_locked = sum(o.status == "skipped" for o in outcomes.values())
        log.info(f"{len(to_reduce)} to reduce, {len(outcomes) - n_locked} up to date, {n_locked} locked")
        select_s = time.perf_counter() - t0

        if to_reduce:
            self._reduce(cfg, log, run_dir, to_reduce, outcomes)

        ordered = [outcomes[ds] for ds in selection.datasets]
        counts = count_line(ordered)
        log.info(f"run {run_id} finished in {time.perf_counter() - t0:.1f} s: {counts}")
        for status in ("reduced", "skipped", "failed"):
            for outcome in ordered:
                if outcome.status == status:
                    log.log(logging.ERROR if status == "failed" else logging.INFO, outcome.line())
        write_json_atomic(run_dir / "summary.json", inside=cfg.log_dir, data={
            "run_id": run_id, "config": str(cfg.path), "host": socket.gethostname(), "pid": os.getpid(),
            "group": selection.group, "selection": selection.description,
            "n_found": selection.n_found, "problems": selection.problems, "headers_read": selection.headers_read,
            "max_parallel": cfg.max_parallel, "select_s": select_s, "total_s": time.perf_counter() - t0,
            "counts": {s: sum(o.status == s for o in ordered) for s in OUTCOMES},
            "outcomes": [o.to_json() for o in ordered],
        })
        self.report_progress(100)
        self.report_status(counts)
        failed = [o for o in ordered if o.status == "failed"]
        if failed:
            names = ", ".join(o.dataset.name for o in failed[:5]) + (", ..." if len(failed) > 5 else "")
            raise StageError(f"{len(failed)} of {len(ordered)} selected datasets failed ({names}); "
                             f"see {log.path}")

    def _reduce(self, cfg: ManagerConfig, log: ManagerLog, run_dir: Path, to_reduce: list[Dataset],
                outcomes: dict[Dataset, Outcome]) -> None:
        """Run ReduceDataset for each dataset (at most max_parallel at once) and record how each ended."""
        run_dir.mkdir(parents=True, exist_ok=True)
        tasks = {ds: ReduceDataset(red_dir=str(ds.red_dir), if_locked="skip", dataset_workers=1,
                                   outcome_file=str(run_dir / f"{i:04d}.json"))
                 for i, ds in enumerate(to_reduce)}
        self.report_status(f"reducing {len(tasks)} datasets, {cfg.max_parallel} at a time")
        self.report_progress(0)
        _release_inherited_fork_lock()
        _preload_science()  # once here, not in every dataset's process
        scheduling = _DatasetScheduling(cfg.max_parallel, log.info)
        progress = _ProgressReporter(self, run_dir, len(tasks))
        progress.start()
        try:
            waiting = list(tasks.values())
            while waiting:
                with nested_build():
                    luigi.build(waiting, worker_scheduler_factory=scheduling, workers=cfg.max_parallel,
                                detailed_summary=True, no_lock=True)
                # The worker stops when the scheduler has nothing for it: datasets still
                # PENDING there wait for units of the resource that other runs hold.
                waiting = [t for t in waiting if not Path(t.outcome_file).exists()
                           and _scheduler_state(scheduling.scheduler, t.task_id).get("status") == "PENDING"]
                if waiting:
                    log.info(f"{len(waiting)} datasets wait for the {DATASET_RESOURCE} resource, held by other runs")
                    time.sleep(_RETRY_WAIT_S * (1.0 + random.random()))
        finally:
            progress.stopped.set()
            progress.join()
        for ds, task in tasks.items():
            outcomes[ds] = _outcome(ds, task, scheduling.scheduler)


def _outcome(ds: Dataset, task: ReduceDataset, scheduler) -> Outcome:
    """How the dataset's reduction ended, from its outcome file; when this manager did not
    run it (another worker of the scheduler did, or is doing), from the dataset itself."""
    data = read_json(Path(task.outcome_file))
    if data is not None and data.get("status") in OUTCOMES:
        return Outcome(ds, data["status"], str(data.get("reason") or ""), data.get("run_id"),
                       data.get("started_unix"), data.get("finished_unix"))
    reason = lock_skip_reason(ds.red_dir)
    if reason:
        return Outcome(ds, "skipped", f"{reason} (run by another worker of the scheduler)")
    if dataset_is_current(ds.red_dir):
        return Outcome(ds, "up_to_date", "reduced by another worker of the scheduler during this run")
    state = _scheduler_state(scheduler, task.task_id)
    if state.get("status") == "RUNNING" and state.get("worker_running"):
        return Outcome(ds, "skipped", f"being started by another worker of the scheduler ({state['worker_running']})")
    if not state:
        return Outcome(ds, "failed", "not run: the scheduler has no record of it (was luigid restarted or "
                                     "unreachable?); run again to reduce it")
    return Outcome(ds, "failed", f"not run (scheduler status {state['status']})")


def _scheduler_state(scheduler, task_id: str) -> dict:
    """The scheduler's record of a task ({} when it has none or cannot be asked)."""
    try:
        found = scheduler.task_search(task_str=task_id) or {}
    except Exception:
        return {}
    for status, tasks in found.items():
        if task_id in tasks:
            return {**tasks[task_id], "status": status}
    return {}
