"""ReductionManager: reduce many datasets at once through the scheduler.

    luigi --module luigi_phot ReductionManager --config reduction_manager_config.yaml

The selection and the lock pre-check are plain code in :mod:`luigi_phot.selection`,
the run log in :mod:`luigi_phot.run_log`; the reductions are run by
:func:`luigi_phot.tasks.batch.reduce_datasets`. This task wires them together:

- it runs ``ReduceDataset(red_dir, if_locked='skip')`` for every selected dataset
  that is neither locked nor up to date, beneath itself, at most
  ``max_parallel`` at once: each holds one unit of the scheduler resource
  ``luigi_phot_dataset`` while it runs, and the limit of that resource is set to
  ``max_parallel`` (on luigid, with the ``update_resource`` call; a local
  scheduler is made with it), so the scheduler never runs more than
  ``max_parallel`` at once, whatever ``--workers`` says and however many
  managers share it. On luigid the visualiser shows the datasets as this task's
  dependencies, their stages and frames beneath them.
- Managers are kept apart by the dataset lock: a dataset another reduction holds
  is reported as skipped, never as failed.
- Each ReduceDataset writes how it ended to
  ``log_dir/manager_runs/<run id>/<n>.json``; the run's summary goes to
  ``arcon_pipeline.log`` and ``summary.json`` there. If any dataset failed,
  the task fails (exit status 30) after all the others have run.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import time
from pathlib import Path

import luigi

from .. import dataset_lock
from ..config import ConfigError, ManagerConfig, load_manager_config
from ..console import console_logger
from ..dataset import write_json_atomic
from ..run_log import MANAGER_LOG_NAME, OUTCOMES, RUNS_DIR, ManagerLog, Outcome, count_line
from ..selection import Dataset, lock_skip_reason, select_datasets
from ..report import write_night_overview
from .base import Reporting, StageError, install_console_filter, user_errors
from .batch import reduce_datasets
from .reduce import dataset_is_current

__all__ = ["ReductionManager"]


class _AbsolutePath(luigi.Parameter):
    """A file path made absolute, so that the task id (one per configuration file on
    luigid) does not depend on the directory the command was started from."""

    def normalize(self, x):
        return str(Path(os.path.expanduser(str(x))).absolute())


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
        log.info(f"night overview: {write_night_overview(cfg.log_dir, run_dir / 'summary.json')}")
        self.report_progress(100)
        self.report_status(counts)
        failed = [o for o in ordered if o.status == "failed"]
        if failed:
            names = ", ".join(o.dataset.name for o in failed[:5]) + (", ..." if len(failed) > 5 else "")
            raise StageError(f"{len(failed)} of {len(ordered)} selected datasets failed ({names}); "
                             f"see {log.path}")

    def _reduce(self, cfg: ManagerConfig, log: ManagerLog, run_dir: Path, to_reduce: list[Dataset],
                outcomes: dict[Dataset, Outcome]) -> None:
        """Reduce each dataset (at most max_parallel at once) and record how each ended."""
        self.report_status(f"reducing {len(to_reduce)} datasets, {cfg.max_parallel} at a time")
        self.report_progress(0)
        outcomes.update(reduce_datasets(to_reduce, cfg.max_parallel, run_dir, supervisor=self, note=log.info))
