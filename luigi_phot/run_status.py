"""Status records of a reduction run: how each of its stages ended, as data (no Luigi).

Each stage of a run (LockDataset, BuildCatalogue, MeasureImage per frame,
BuildLightcurve, UploadToTOM, ReleaseLock) writes one small JSON record when it
ends, ``<task id>.json`` in the run's records folder::

    {"run_id": "20261127T231500Z-1a2b3c", "stage": "MeasureImage", "frame": "f001.fits",
     "status": "done", "reason": "", "finished_unix": 1795820100.2, "host": "...", "pid": 4242}

``status`` is ``done``; ``failed``, with the stage's one-line error as ``reason``; or
``lock_held`` (LockDataset found the lock taken by another reduction; ``reason`` names
it). Before its frames are measured, BuildLightcurve writes ``measuring`` with the
number of frames it waits for (``to_measure``, of ``frames``).

ReduceDataset makes the folder (:func:`new_records_folder`: in the temporary
directory, never in red_dir, so that a record neither needs the dataset's lock nor
meets a full or read-only red_dir), reads the records while its stages run
(:func:`run_progress`: the dataset's percentage and message in the visualiser)
and when they have run (:func:`lost_lock_race`, :func:`failure_summary`), then
removes the folder: how the run ended is kept in the manager's outcome record,
what happened in ``aperture_pipeline.log``, which nothing reads back. A record
that cannot be written is left out: the stage's own error is what counts, and
ReduceDataset then says that no record tells why.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .dataset import read_json

__all__ = ["StageRecord", "new_records_folder", "write_record", "read_records", "lost_lock_race", "failure_summary",
           "run_progress"]

#: The stages of a run in order; MeasureImage runs once per frame.
STAGES = ("LockDataset", "BuildCatalogue", "MeasureImage", "BuildLightcurve", "UploadToTOM", "ReleaseLock")


@dataclass(frozen=True)
class StageRecord:
    """How one stage of a run ended (see the module docstring)."""

    stage: str
    status: str
    reason: str = ""
    frame: str | None = None
    frames: int | None = None
    to_measure: int | None = None
    finished_unix: float | None = None


def new_records_folder(run_id: str) -> Path:
    """A new, private folder for the records of run `run_id` (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix=f"luigi_phot-run-{run_id}-"))


def write_record(folder: Path, name: str, run_id: str, stage: str, status: str, reason: str = "", **extra) -> bool:
    """Write the record `name` (a file name: the stage's task id) of run `run_id` into
    `folder`, whole or not at all. False when it cannot be written; never raises."""
    data = {"run_id": run_id, "stage": stage, "status": status, "reason": reason, "finished_unix": time.time(),
            "host": socket.gethostname(), "pid": os.getpid(), **extra}
    path = Path(folder) / f"{name}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, default=str))
        os.replace(tmp, path)
        return True
    except (OSError, ValueError):
        try:
            tmp.unlink()
        except OSError:
            pass
        return False


def read_records(folder: Path, run_id: str) -> list[StageRecord]:
    """The records of run `run_id` in `folder` so far, in stage order ([] when none)."""
    found = []
    try:
        paths = sorted(Path(folder).glob("*.json"))
    except OSError:
        return []
    for path in paths:
        data = read_json(path)
        if data is None or data.get("run_id") != run_id or not isinstance(data.get("status"), str):
            continue
        found.append(StageRecord(stage=str(data.get("stage")), status=data["status"],
                                 reason=str(data.get("reason") or ""), frame=data.get("frame"),
                                 frames=_count(data.get("frames")), to_measure=_count(data.get("to_measure")),
                                 finished_unix=data.get("finished_unix")))
    order = {stage: k for k, stage in enumerate(STAGES)}
    return sorted(found, key=lambda r: (order.get(r.stage, len(order)), r.finished_unix or 0.0))


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def lost_lock_race(records: list[StageRecord]) -> str:
    """Why LockDataset could not take the lock (another reduction holds it), or ''."""
    return next((r.reason for r in records if r.stage == "LockDataset" and r.status == "lock_held"), "")


def failure_summary(records: list[StageRecord], max_chars: int = 1000) -> str:
    """The failed stages' one-line reasons, one per stage ('' when none failed): six
    frames that failed for the same full disk are one story."""
    by_stage: dict[str, list[str]] = {}
    for r in records:
        if r.status in ("failed", "lock_held"):
            by_stage.setdefault(r.stage, []).append(r.reason)
    parts = []
    for stage, reasons in by_stage.items():
        more = len(reasons) - 1
        parts.append(f"{stage}: {reasons[0]}" + (f" (and {more} more {stage} failures)" if more else ""))
    return "; ".join(parts)[:max_chars]


#: Stages whose end marks a point of the run: (stage, percent, message).
_MILESTONES = (("ReleaseLock", 100, "finished; lock released"), ("UploadToTOM", 97, "light curve published"),
               ("BuildLightcurve", 92, "light curve written"))


def run_progress(records: list[StageRecord]) -> tuple[int, str]:
    """The run's progress for the visualiser, (percent, message), from its records: 5 %
    with the lock, 15 % with the catalogue, up to 90 % as the frames to measure are
    measured, then the light curve, the upload and the release."""
    done = {r.stage for r in records if r.status == "done"}
    measuring = next((r for r in records if r.stage == "BuildLightcurve" and r.status == "measuring"), None)
    milestone = next(((p, m) for stage, p, m in _MILESTONES if stage in done), None)
    if milestone is not None:
        percent, message = milestone
    elif measuring is not None and measuring.to_measure:
        measured = min(sum(r.stage == "MeasureImage" for r in records), measuring.to_measure)
        percent = 15 + int(75 * measured / measuring.to_measure)
        message = f"{measured} of {measuring.to_measure} frames measured ({measuring.frames} in the dataset)"
    elif "BuildCatalogue" in done:
        percent, message = 15, "catalogue built"
    elif "LockDataset" in done:
        percent, message = 5, "lock taken"
    else:
        percent, message = 0, "starting"
    failed = next((r for r in records if r.status in ("failed", "lock_held")), None)
    if failed is not None:
        message = f"{failed.stage} failed: {failed.reason}"
    return percent, message[:200]
