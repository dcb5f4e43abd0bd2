"""MeasureImage: one frame measured against the catalogue (or its rejection recorded).

The measurement file is named after the frame's name and content digest
(``dataset.measurement_path``): a frame whose content changes, whatever its
mtime, has no measurement yet and is measured again - a rejected frame too,
e.g. one seen truncated while it was still being copied.

A rejection is remembered (the frame is not tried again while its content is
unchanged) unless its cause is the frame's environment rather than its content:
permission denied, an I/O error, the file changing while it was measured. Such
a frame is rejected for the current run only: beside its rejection record, a
``.retry.json`` marker names the run, and the measurement counts as done for
that run alone, so the next run measures the frame again.

Anything about the frame itself - its name, a header value, a measurement that
raises, a measurement file that cannot be written for what it holds - rejects
this frame with the reason; it never fails the dataset.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from pathlib import Path

import luigi

from ..dataset import (WriteError, atomic_path, catalogue_path, environmental_cause, frame_identity,
                       measurement_key, measurement_path, read_json, retry_path, write_json_atomic)
from ..names import shown
from .base import DatasetStage, warnings_to_log
from .catalogue import BuildCatalogue
from .lock import LockDataset
from .memory import for_large_arrays

__all__ = ["MeasureImage"]


class _MeasurementTarget(luigi.LocalTarget):
    """The measurement of the frame's current content, unless it is a rejection for an
    environmental cause made by another run (that one is retried)."""

    def __init__(self, path, run_id: str):
        super().__init__(str(path))
        self.run_id = run_id

    @property
    def retry_path(self) -> Path:
        return retry_path(Path(self.path))

    def exists(self) -> bool:
        if not os.path.isfile(self.path):
            return False
        marker = read_json(self.retry_path)
        return marker is None or marker.get("run_id") == self.run_id


class _Rejected(Exception):
    """This frame is not used: `reason`; `environmental` when for this run only."""

    def __init__(self, reason: str, environmental: bool = False, info=None):
        super().__init__(reason)
        self.reason = reason
        self.environmental = environmental
        self.info = info


class MeasureImage(DatasetStage):
    """Measure every catalogue star on one frame."""

    image = luigi.Parameter(description="frame file name inside red_dir")

    def requires(self):
        return {"lock": LockDataset(red_dir=self.red_dir, run_id=self.run_id),
                "catalogue": BuildCatalogue(red_dir=self.red_dir, run_id=self.run_id)}

    @property
    def shown(self) -> str:
        """The frame's name as printable text (for the log)."""
        return shown(self.image)

    def output(self):
        return self._target(frame_identity(self.red, self.image).digest)

    def _target(self, digest: str) -> _MeasurementTarget:
        key = measurement_key(self.red, self.config)
        return _MeasurementTarget(measurement_path(self.red, key, self.image, digest), self.run_id)

    @warnings_to_log
    @for_large_arrays
    def run(self):
        self.check_lock()
        ident = frame_identity(self.red, self.image)
        target = self._target(ident.digest)
        out = Path(target.path)

        def progress(fraction, message):
            self.report_progress(int(100 * fraction))
            self.report_status(f"{self.shown}: {message}")

        with self.timed() as t:
            progress(0.0, "reading")
            try:
                m, info, cat = self._measure(ident, progress)
                self._write(out, m.stars, dataclasses.replace(m.facts, frame_digest=ident.digest))
            except _Rejected as rejection:
                self._reject(out, ident.digest, rejection)
                return
            retry_path(out).unlink(missing_ok=True)
        from ..photometry.alignment import header_wcs_error

        notes = list(m.notes)
        wcs_note = header_wcs_error(info, cat, m)
        if wcs_note:
            notes.append(wcs_note)
        if notes:
            self.note(f"{self.shown}: " + "; ".join(notes), 30)
        facts = m.facts
        steps = ", ".join(f"{k} {v:.2f}" for k, v in m.timings.items())
        self.note(f"{self.shown}: measured {len(m.stars)} stars in {t.seconds:.2f} s "
                  f"(aligned {facts.alignment_method} rms {facts.alignment_rms_pix:.3f} px "
                  f"on {facts.alignment_n_stars} stars, "
                  f"FWHM {facts.fwhm_centre_arcsec:.2f}\", scale {facts.photometric_scale:.3f}; {steps})")
        progress(1.0, "done")

    def _measure(self, ident, progress):
        """(measurement, frame info, catalogue); raises _Rejected with the reason."""
        from ..photometry.catalogue import Catalogue
        from ..photometry.frames import FrameError, load_frame
        from ..photometry.measure import FrameRejected, MeasureSettings, measure_frame

        path = self.red / self.image
        info = None
        try:
            frame = load_frame(path, self.config.camera)
            info = frame.info
            if info.notes:
                self.note(f"{self.shown}: " + "; ".join(info.notes), 30)
            cat = Catalogue.load(catalogue_path(self.red))
            try:
                m = measure_frame(frame, cat, MeasureSettings.from_config(self.config.photometry),
                                  progress=progress)
            except (FrameRejected, MemoryError):
                raise
            except Exception as exc:
                # bad pixels we did not foresee must not stop the other frames (or the
                # dataset): reject this one, with the traceback for whoever fixes it
                self.log.warning(f"[{self.run_id}] {self.task_family}: {self.shown}: measurement raised:\n"
                                 + traceback.format_exc().rstrip())
                raise FrameRejected(f"measurement failed ({type(exc).__name__}: "
                                    f"{' '.join(str(exc).split())[:200]}); traceback in the log") from None
            m.facts = dataclasses.replace(m.facts, pixel_digest=frame.pixel_digest)
            del frame
        except (FrameError, FrameRejected) as exc:
            reason = exc.problem if isinstance(exc, FrameError) else str(exc)
            raise _Rejected(reason, environmental_cause(exc, path), info) from None
        if _changed_since(path, ident):
            raise _Rejected("the frame changed while it was measured (still being written?)", True, info)
        return m, info, cat

    def _write(self, out: Path, stars, facts) -> None:
        """Write the measurement; what the file cannot hold (a value of the frame's
        header) rejects the frame; a full disk or a read-only red_dir fails the stage."""
        from ..photometry.lightcurve import write_measurement

        try:
            with atomic_path(out, inside=self.red) as tmp:
                write_measurement(tmp, stars, facts)
        except WriteError:
            raise
        except Exception as exc:
            raise _Rejected(f"its measurement cannot be written ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]})") from None

    def _reject(self, out: Path, digest: str, rejection: _Rejected) -> None:
        from ..photometry.lightcurve import write_rejection

        info, reason = rejection.info, rejection.reason
        retry = retry_path(out)
        if rejection.environmental:  # the marker first: a rejection file alone would be remembered
            write_json_atomic(retry, {"frame": self.image, "digest": digest, "run_id": self.run_id,
                                      "reason": reason}, inside=self.red)
        with atomic_path(out, inside=self.red) as tmp:
            write_rejection(tmp, self.image, reason, mjd_mid=info.mjd_mid if info else None,
                            extra={"FRAMEDIG": (digest, "sha256 of the frame rejected")})
        if rejection.environmental:
            self.note(f"{self.shown}: rejected: {reason} (a cause outside the frame: "
                      "it will be tried again on the next run)", 30)
        else:
            retry.unlink(missing_ok=True)
            self.note(f"{self.shown}: rejected: {reason}", 30)


def _changed_since(path: Path, ident) -> bool:
    """True when the frame is not the file whose content `ident` identifies any more (or
    changed while it was read)."""
    if ident.stat_key is None:   # unreadable then, or changing while it was hashed
        return True
    try:
        st = os.stat(path)
    except OSError:
        return True
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != ident.stat_key
