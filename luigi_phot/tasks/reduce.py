"""ReduceDataset: one dataset, from lock to release, as one scheduled unit.

The task holds one unit of the scheduler resource ``luigi_phot_dataset`` for the
whole of its dataset's reduction (the manager sets the limit to max_parallel),
and runs the dataset's stages beneath it (``scheduling.run_beneath``):
LockDataset, BuildCatalogue, MeasureImage (one per frame), BuildLightcurve,
UploadToTOM, ReleaseLock, as Luigi tasks of their own through the same
scheduler. On luigid the visualiser shows them as the task's dependencies, and
the task's progress, read from the stages' status records (``run_status.py``),
as a percentage.

When the stages have run, the records say how it went: ReleaseLock's record of
the run (``reduction_record.json`` naming it) that the dataset was reduced;
LockDataset's that another reduction took the lock first; the failed stages'
one-line reasons. The lock is released whatever happened.

With ``if_locked='skip'`` (as the ReductionManager runs it) a dataset that another
reduction holds - found at the start, or lost to it in the race for the lock - is
skipped. A dataset that another run finished after this task was scheduled is left
alone. ``outcome_file`` receives how the run ended: reduced, up_to_date, skipped or
failed, the reason, and the start and end times of run(). A task with an outcome
file (a manager's: each manager run has its own) is never retried by the scheduler.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path

import luigi

from .. import dataset_lock
from ..config import ConfigError
from ..dataset import (RECORD_NAME, WriteError, dataset_logger, fingerprint, frame_identities, read_json,
                       resolve_red_dir, write_json_atomic)
from ..photometry.frames import list_frames
from ..run_status import failure_summary, lost_lock_race, new_records_folder, read_records, run_progress
from .base import Reporting, StageError, install_console_filter, load_config, register_run
from .lock import ReleaseLock
from .scheduling import ProgressWatcher, run_beneath

__all__ = ["ReduceDataset", "dataset_is_current", "DATASET_RESOURCE", "preload_science"]

DATASET_RESOURCE = "luigi_phot_dataset"


def dataset_is_current(red_dir) -> bool:
    """True when the last finished reduction was made from the current frames (their
    names and contents) and configuration, rejected no frame for an environmental cause
    (permission denied, an I/O error: those are tried again), and no reduction holds
    the lock. Reads only frames new or changed since their digests were cached."""
    try:
        red = resolve_red_dir(red_dir)
        cfg = load_config(red)
    except (ConfigError, OSError):
        return False
    rec = read_json(red / RECORD_NAME)
    if rec is None or rec.get("retry") or dataset_lock.read_lock(red) is not None:
        return False
    recorded = rec.get("frames")
    if not isinstance(recorded, dict) or set(recorded) != {p.name for p in list_frames(red)}:
        return False   # a frame came or went: no need to read the new ones here (the reduction will)
    if rec.get("fingerprint") != fingerprint(cfg, frame_identities(red)):
        return False
    # a product deleted since (by hand) is made again
    return all((red / name).is_file() for name in rec.get("products", []))


class ReduceDataset(Reporting, luigi.Task):
    """Reduce the dataset in red_dir (its reduction_config.yaml says how)."""

    red_dir = luigi.Parameter(description="dataset directory with frames and reduction_config.yaml")
    dataset_workers = luigi.IntParameter(default=0, significant=False,
                                         description="workers for this dataset's stages (0: the command's --workers)")
    if_locked = luigi.ChoiceParameter(choices=["fail", "skip"], default="fail", significant=False,
                                      description="when another reduction holds the lock: fail, or skip quietly")
    outcome_file = luigi.Parameter(default="", description="write how this run ended (reduced, up_to_date, skipped or "
                                                           "failed, with the reason and start and end times) to this "
                                                           "JSON file (the manager's: one per dataset and run)")

    resources = {DATASET_RESOURCE: 1}

    @property
    def retry_count(self):
        """A manager's reduction (one with an outcome file) is tried once: its failure
        disables the task for the scheduler, so that the manager's worker, which waits
        for units of the resource other runs hold, neither waits for a retry nor makes
        one. A reduction run by hand keeps the scheduler's policy."""
        return 1 if self.outcome_file else None

    def complete(self):
        return dataset_is_current(self.red_dir)

    def on_failure(self, exception):
        from .base import one_line_error

        one_line = one_line_error(exception)
        return one_line if one_line is not None else super().on_failure(exception)

    def run(self):
        started = time.time()
        result = {"status": "failed", "reason": "interrupted", "run_id": None}
        try:
            result.update(self._reduce())
        except BaseException as exc:
            result["reason"] = " ".join(str(exc).split()) or type(exc).__name__
            raise
        finally:
            if self.outcome_file:
                self._write_outcome(result, started)

    def _write_outcome(self, result: dict, started: float) -> None:
        try:
            outcome = Path(self.outcome_file).absolute()
            write_json_atomic(outcome, inside=outcome.parent, data={
                **result, "red_dir": str(self.red_dir), "started_unix": started, "finished_unix": time.time(),
                "host": socket.gethostname(), "pid": os.getpid()})
        except (OSError, WriteError) as exc:  # never hide the run's own exception
            logging.getLogger("luigi-interface").warning(
                f"{self.outcome_file}: cannot write the outcome ({getattr(exc, 'reason', None) or exc.strerror})")

    def _reduce(self) -> dict:
        """The reduction; returns {'status': 'reduced'|'up_to_date'|'skipped', 'reason', 'run_id'}."""
        install_console_filter()
        red = resolve_red_dir(self.red_dir)
        log = dataset_logger(red)
        try:
            cfg = load_config(red)
        except ConfigError as exc:
            log.error(f"configuration error: {exc}")
            raise
        run_id = dataset_lock.new_run_id()
        holder = dataset_lock.read_lock(red)
        if holder is not None and dataset_lock.holder_state(holder) != "dead":
            message = dataset_lock.held_message(red, holder, dataset_lock.holder_state(holder))
            if self.if_locked == "skip":
                return self._skipped(log, message)
            raise dataset_lock.LockHeldError(message)
        # Read after the lock: a run that finished since this task was scheduled wrote its
        # record before it released the lock, so the check cannot miss it.
        if holder is None and dataset_is_current(red):
            log.info("nothing to do: already reduced from the current frames and configuration")
            self.report_status("up to date")
            return {"status": "up_to_date", "reason": "already reduced by another run"}
        log.info(f"========== run {run_id}: reducing {red} ({len(list_frames(red))} frames, "
                 f"target {cfg.target.name}) ==========")
        records = new_records_folder(run_id)
        try:
            register_run(run_id, records)
            succeeded = self._run_stages(red, run_id, records, log)
            return self._ending(red, run_id, read_records(records, run_id), log, succeeded)
        finally:
            shutil.rmtree(records, ignore_errors=True)

    def _run_stages(self, red: Path, run_id: str, records: Path, log: logging.Logger) -> bool:
        """Run the stages of run `run_id` beneath this task, showing its progress from the
        stages' records in `records`; release the lock if the run did not. True when no
        stage failed (see run_beneath)."""
        workers = self.dataset_workers or luigi.interface.core().workers
        preload_science()
        try:
            with ProgressWatcher(self, lambda: run_progress(read_records(records, run_id))):
                return run_beneath(self, [ReleaseLock(red_dir=str(red), run_id=run_id)], workers=workers)
        finally:
            try:
                if dataset_lock.release(red, run_id):
                    log.warning(f"[{run_id}] run ended unfinished: lock released")
            except OSError as exc:  # e.g. red_dir became read-only: the next run takes it over
                log.warning(f"[{run_id}] run ended unfinished; the lock could not be removed "
                            f"({exc.strerror}): the next run will take it over as stale")

    def _ending(self, red: Path, run_id: str, records: list, log: logging.Logger, succeeded: bool) -> dict:
        """How run `run_id` ended, from its status `records` and ReleaseLock's record of the
        run; raises StageError when it failed."""
        if ReleaseLock(red_dir=str(red), run_id=run_id).complete():
            log.info(f"[{run_id}] reduction finished")
            return {"status": "reduced", "reason": "", "run_id": run_id}
        lost = lost_lock_race(records)
        if lost and self.if_locked == "skip":
            # another reduction took the lock between the check above and LockDataset
            return self._skipped(log, lost, run_id)
        failed = failure_summary(records)
        if not failed:
            failed = ("no stage failed, but some were never run (was the scheduler restarted or unreachable?); "
                      "run again to finish the dataset") if succeeded else \
                "a stage failed, and no status record says why (see the messages above)"
        log.error(f"[{run_id}] reduction failed: {failed}")
        self.report_status(f"failed: {failed}"[:200])
        raise StageError(f"{red}: reduction failed: {failed}")

    def _skipped(self, log, message: str, run_id: str | None = None) -> dict:
        log.info(f"{'[' + run_id + '] ' if run_id else ''}skipped: {message}")
        self.report_status(f"skipped: {message}")
        return {"status": "skipped", "reason": message, "run_id": run_id}


def preload_science() -> None:
    """Stages run in processes forked from this one: importing the science stack here,
    once, saves every MeasureImage the import time."""
    import numpy as np
    from photutils.aperture import AperturePhotometry, CircularAperture

    from ..photometry import catalogue, lightcurve, measure, plots  # noqa: F401
    from scipy import ndimage, optimize, signal, sparse, spatial  # noqa: F401

    plots._pyplot()
    AperturePhotometry(np.zeros((8, 8)), CircularAperture([(4.0, 4.0)], r=2.0)).flux
    # astropy reads its IERS tables (about 1 s) on the first BJD of a process
    from ..photometry.timing import bjd_tdb

    bjd_tdb(np.array([61000.0]), 0.0, 0.0, [(-30.0, -70.0, 2000.0)])
