"""UploadToTOM: publish the light curve to the TOM, or record why not.

upload_record.json says what the last attempt did: 'uploaded'; 'unchanged' (the
same CSV content is already the product of the same target, under the same
name, on the same TOM: not sent again); 'skipped' (tom.upload is false); or
'failed', with the TOM's one-line error. Its ``key`` (TOM settings and the light
curve's inputs) marks the stage complete; a failed record has none, so the next
run retries the upload, and only the upload.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import luigi

from ..dataset import UPLOAD_RECORD_NAME, read_json, write_json_atomic
from .base import DatasetStage
from .lightcurve import BuildLightcurve
from .lock import LockDataset

__all__ = ["UploadToTOM"]


def _sha256(path) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


class _UploadTarget(luigi.LocalTarget):
    """The upload record matches the current light curve and TOM settings, and that
    light curve is on disk (a deleted light curve is rebuilt, then checked again)."""

    def __init__(self, path, key, lightcurve_target):
        super().__init__(str(path))
        self.key = key
        self.lightcurve_target = lightcurve_target

    def exists(self) -> bool:
        rec = read_json(self.path)
        return rec is not None and rec.get("key") == self.key and self.lightcurve_target.exists()


class UploadToTOM(DatasetStage):
    """Replace the dataset's data product on the TOM with the current light curve."""

    def requires(self):
        return {"lock": LockDataset(red_dir=self.red_dir, run_id=self.run_id),
                "lightcurve": BuildLightcurve(red_dir=self.red_dir, run_id=self.run_id)}

    def _csv(self):
        return self.red / BuildLightcurve(red_dir=self.red_dir, run_id=self.run_id)._names()["lc_csv"]

    def _key(self) -> str:
        # the light curve's own input key: when anything upstream changes, this stage
        # is incomplete too (Luigi then visits BuildLightcurve before it)
        lc_key = BuildLightcurve(red_dir=self.red_dir, run_id=self.run_id).input_key()
        return hashlib.sha256(f"{self.config.tom_key()}:{lc_key}".encode()).hexdigest()[:16]

    def output(self):
        lightcurve = BuildLightcurve(red_dir=self.red_dir, run_id=self.run_id).output()
        return _UploadTarget(self.red / UPLOAD_RECORD_NAME, self._key(), lightcurve)

    def run(self):
        self.check_lock()
        cfg = self.config
        csv = self._csv()
        record = {"key": self._key(), "csv": csv.name, "sha256": _sha256(csv),
                  "time_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        previous = read_json(self.red / UPLOAD_RECORD_NAME) or {}
        if not cfg.tom.upload:
            record.update(status="skipped", reason="tom.upload is false")
            write_json_atomic(self.red / UPLOAD_RECORD_NAME, record, inside=self.red)
            self.note("upload skipped (tom.upload is false)")
            return
        from ..config import load_tom_config
        from ..tom import TomError, plan_upload, publish_photometry

        tom = load_tom_config(cfg.tom.config_file)
        filter_token = BuildLightcurve(red_dir=self.red_dir, run_id=self.run_id).filter_token()
        product_name = f"{cfg.tom.data_label}_{filter_token}"
        destination = {"url": tom.url, "target": cfg.target.name, "product_name": product_name}
        plan = plan_upload(previous, tom.url, cfg.target.name, product_name, record["sha256"])
        if not plan.send:
            record.update(destination, status="unchanged", reason="identical light curve already on the TOM",
                          **{k: previous.get(k) for k in ("target_id", "product_id", "n_points")})
            write_json_atomic(self.red / UPLOAD_RECORD_NAME, record, inside=self.red)
            self.note("light curve unchanged since the last upload: not uploaded again")
            return
        previous_product_id = plan.replace_product_id
        self.report_status(f"uploading {csv.name} to {tom.url}")
        try:
            with self.timed() as t:
                result = publish_photometry(
                    tom, cfg.target.name, csv, product_name,
                    previous_product_id=previous_product_id, create_target=cfg.tom.create_target,
                    ra_deg=cfg.target.ra_deg, dec_deg=cfg.target.dec_deg, logger=self.log)
        except Exception as exc:
            # The previous product may be deleted already (it goes first): the old record
            # must not stand for what the TOM holds. This one marks the stage incomplete
            # and keeps the previous product's id for the next attempt to delete.
            error = str(exc) if isinstance(exc, TomError) else type(exc).__name__
            write_json_atomic(self.red / UPLOAD_RECORD_NAME, inside=self.red, data={
                "status": "failed", "error": error, "csv": csv.name, "sha256": record["sha256"],
                "time_utc": record["time_utc"], **destination, "product_id": previous_product_id})
            raise
        record.update(destination, status="uploaded", target_id=result.target_id, product_id=result.product_id,
                      n_points=result.n_points)
        write_json_atomic(self.red / UPLOAD_RECORD_NAME, record, inside=self.red)
        self.note(f"uploaded {csv.name} to {tom.url} as data product {result.product_id} "
                  f"({result.n_points} points) in {t.seconds:.1f} s")
