"""ReduceDataset: one dataset, from lock to release, as one scheduled unit.

The run holds one unit of the scheduler resource ``luigi_phot_dataset`` for its
whole duration (the manager sets its limit to max_parallel), and runs its
stages - LockDataset, BuildCatalogue, MeasureImage (one per frame),
BuildLightcurve, UploadToTOM, ReleaseLock - as their own Luigi tasks through
the same scheduler, so the visualiser shows each one and its progress.

With ``if_locked='skip'`` (as the ReductionManager runs it) a dataset that another
reduction holds - found at the start, or lost to it in the race for the lock - is
skipped. A dataset that another run finished after this task was scheduled is left
alone. ``outcome_file`` receives how the run ended: reduced, up_to_date, skipped or
failed, the reason, and the start and end times of run().
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import luigi

from .. import dataset_lock
from ..config import ConfigError
from ..console import nested_build
from ..dataset import (LOG_NAME, RECORD_NAME, WriteError, dataset_logger, fingerprint, frame_identities, read_json,
                       resolve_red_dir, write_json_atomic)
from ..photometry.frames import list_frames
from .base import Reporting, StageError, install_console_filter, load_config, register_run_owner
from .lock import LOCK_HELD_NOTE, ReleaseLock

__all__ = ["ReduceDataset", "dataset_is_current", "DATASET_RESOURCE"]

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
    outcome_file = luigi.Parameter(default="", significant=False,
                                   description="write how this run ended (reduced, up_to_date, skipped or failed, "
                                               "with the reason and start and end times) to this JSON file")

    resources = {DATASET_RESOURCE: 1}

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
            message = dataset_lock.LockHeldError(dataset_lock.held_message(red, holder, dataset_lock.holder_state(holder)))
            if self.if_locked == "skip":
                return self._skipped(log, str(message))
            raise message
        # Read after the lock: a run that finished since this task was scheduled wrote its
        # record before it released the lock, so the check cannot miss it.
        if holder is None and dataset_is_current(red):
            log.info("nothing to do: already reduced from the current frames and configuration")
            self.report_status("up to date")
            return {"status": "up_to_date", "reason": "already reduced by another run"}
        register_run_owner(run_id)
        n_frames = len(list_frames(red))
        log.info(f"========== run {run_id}: reducing {red} ({n_frames} frames, target {cfg.target.name}) ==========")
        workers = self.dataset_workers or luigi.interface.core().workers
        _release_inherited_fork_lock()
        _preload_science()
        result = None
        try:
            with nested_build():
                result = luigi.build([ReleaseLock(red_dir=str(red), run_id=run_id)], workers=workers,
                                     detailed_summary=True, no_lock=True)
        finally:
            try:
                if dataset_lock.release(red, run_id):
                    log.warning(f"[{run_id}] run ended unfinished: lock released")
            except OSError as exc:  # e.g. red_dir became read-only: the next run takes it over
                log.warning(f"[{run_id}] run ended unfinished; the lock could not be removed "
                            f"({exc.strerror}): the next run will take it over as stale")
        ok = result is not None and result.status in (luigi.LuigiStatusCode.SUCCESS,
                                                      luigi.LuigiStatusCode.SUCCESS_WITH_RETRY)
        if not ok:
            lost = _lost_lock_race(red, run_id)
            if lost and self.if_locked == "skip":
                # another reduction took the lock between the check above and LockDataset
                return self._skipped(log, lost, run_id)
            status = result.status.name if result is not None else "not run"
            failed = _failure_summary(red, run_id)
            if not failed and result is not None:
                if result.status in (luigi.LuigiStatusCode.NOT_RUN, luigi.LuigiStatusCode.SCHEDULING_FAILED):
                    failed = ("no stage failed, but some were never run (was the scheduler restarted or "
                              "unreachable?); run again to finish the dataset")
                else:  # e.g. a full disk: the stages' own one-line reasons are on the console
                    failed = f"a stage failed, and {LOG_NAME} could not record why (see the messages above)"
            log.error(f"[{run_id}] reduction failed ({status}){': ' + failed if failed else ''}")
            raise StageError(f"{red}: reduction failed ({status}){': ' + failed if failed else ''}")
        log.info(f"[{run_id}] reduction finished")
        return {"status": "reduced", "reason": "", "run_id": run_id}

    def _skipped(self, log, message: str, run_id: str | None = None) -> dict:
        log.info(f"{'[' + run_id + '] ' if run_id else ''}skipped: {message}")
        self.report_status(f"skipped: {message}")
        return {"status": "skipped", "reason": message, "run_id": run_id}


def _preload_science() -> None:
    """Stages run in processes forked from this one: importing the science stack here,
    once, saves every MeasureImage the import time."""
    import numpy as np
    from photutils.aperture import AperturePhotometry, CircularAperture

    from ..photometry import catalogue, lightcurve, measure, plots  # noqa: F401
    from scipy import ndimage, optimize, signal, sparse, spatial  # noqa: F401

    plots._pyplot()
    AperturePhotometry(np.zeros((8, 8)), CircularAperture([(4.0, 4.0)], r=2.0)).flux


def _release_inherited_fork_lock() -> None:
    """Luigi forks a task process while holding luigi.worker.fork_lock, so the child
    starts with that lock taken by a thread that does not exist in it. The stages'
    build forks again and would wait on it forever: give the child a fresh lock."""
    import threading

    import luigi.worker

    if luigi.worker.fork_lock.locked():
        luigi.worker.fork_lock = threading.Lock()


def _run_lines(red, run_id: str) -> list[str]:
    """What run `run_id` wrote to the dataset's log (its stages may run in other processes)."""
    try:
        with open(red / LOG_NAME, encoding="utf-8", errors="replace") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 200_000))
            lines = fh.read().splitlines()
    except OSError:
        return []
    marker = f"[{run_id}] "
    return [ln.split(marker, 1)[1] for ln in lines if marker in ln]


def _lost_lock_race(red, run_id: str) -> str:
    """The reason LockDataset of run `run_id` gave when another reduction held the lock, or ''."""
    prefix = f"LockDataset: {LOCK_HELD_NOTE}: "
    return next((ln[len(prefix):] for ln in _run_lines(red, run_id) if ln.startswith(prefix)), "")


def _failure_summary(red, run_id: str) -> str:
    """The one-line reasons its stages logged when they failed (they may run in other
    processes), one per stage: six frames that failed for the same full disk are one story."""
    reasons = [ln for ln in _run_lines(red, run_id) if "FAILED: " in ln]
    by_stage: dict[str, list[str]] = {}
    for reason in dict.fromkeys(reasons):
        by_stage.setdefault(reason.split(":", 1)[0], []).append(reason)
    return "; ".join(f"{found[0]}" + (f" (and {len(found) - 1} more {stage} failures)" if len(found) > 1 else "")
                     for stage, found in by_stage.items())[:1000]
