"""LockDataset and ReleaseLock: the first and last stages of a reduction run."""

from __future__ import annotations

import datetime as dt

import luigi

from .. import dataset_lock
from ..dataset import (RECORD_NAME, UPLOAD_RECORD_NAME, WriteError, fingerprint, frame_identities, read_json,
                       remove_stale_temporaries, write_json_atomic)
from .base import DatasetStage, run_owner_pid

__all__ = ["LockDataset", "ReleaseLock", "LockTarget"]


class LockTarget(luigi.Target):
    """Exists while red_dir/dataset.lock is held by run `run_id`."""

    def __init__(self, red_dir, run_id):
        self.red_dir = red_dir
        self.run_id = run_id

    def exists(self) -> bool:
        holder = dataset_lock.read_lock(self.red_dir)
        return holder is not None and holder.run_id == self.run_id


class LockDataset(DatasetStage):
    """Take red_dir/dataset.lock for this run (atomically; a stale lock of a dead
    process on this host is taken over with a warning). When another reduction holds
    it, its status record says 'lock_held' (ReduceDataset(if_locked='skip') then
    reports the dataset as skipped, not failed)."""

    def output(self):
        return LockTarget(self.red, self.run_id)

    def run(self):
        try:
            holder = dataset_lock.acquire(self.red, self.run_id, pid=run_owner_pid(self.run_id),
                                  warn=lambda m: self.note(m, 30))
        except OSError as exc:  # a read-only red_dir, a full disk
            raise WriteError(self.red / dataset_lock.LOCK_NAME, exc) from exc
        removed = remove_stale_temporaries(self.red)
        self.note(f"lock taken by pid {holder.pid} on {holder.host}"
                  + (f"; removed {removed} temporary files left by an interrupted run" if removed else ""))

    def failure_status(self, exception) -> str:
        return "lock_held" if isinstance(exception, dataset_lock.LockHeldError) else "failed"


class ReleaseLock(DatasetStage):
    """Record what the finished reduction was made of, then release the lock."""

    def requires(self):
        from .upload import UploadToTOM

        return {"lock": LockDataset(red_dir=self.red_dir, run_id=self.run_id),
                "upload": UploadToTOM(red_dir=self.red_dir, run_id=self.run_id)}

    def output(self):
        return _RecordTarget(self.red / RECORD_NAME, self.run_id)

    def run(self):
        self.check_lock()
        cfg = self.config
        from .lightcurve import BuildLightcurve

        index = read_json(BuildLightcurve(red_dir=self.red_dir, run_id=self.run_id).index_path) or {}
        # the frames the light curve was made from (a frame added or changed since makes
        # the record stale, so that the next run takes it in)
        made_from = index.get("frames")
        if isinstance(made_from, dict):
            frames = [(name, f.get("digest") if isinstance(f, dict) else None) for name, f in made_from.items()]
        else:
            frames = frame_identities(self.red)
        upload = read_json(self.red / UPLOAD_RECORD_NAME) or {}
        record = {
            "run_id": self.run_id,
            "finished_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "fingerprint": fingerprint(cfg, frames),
            "target": cfg.target.name,
            "frames": index.get("frames", {}),
            "n_frames": len(frames),
            "n_measured": index.get("n_measured"),
            "n_rejected": index.get("n_rejected"),
            # frames rejected for an environmental cause: the dataset is not current until they are retried
            "retry": index.get("retry", {}),
            "lightcurve": index.get("lightcurve"),
            "products": index.get("products", []),
            "upload": upload.get("status"),
        }
        write_json_atomic(self.red / RECORD_NAME, record, inside=self.red)
        dataset_lock.release(self.red, self.run_id)
        self.note(f"finished: {record['n_measured']} frames measured, {record['n_rejected']} rejected; lock released")


class _RecordTarget(luigi.Target):
    def __init__(self, path, run_id):
        self.path = path
        self.run_id = run_id

    def exists(self) -> bool:
        rec = read_json(self.path)
        return rec is not None and rec.get("run_id") == self.run_id
