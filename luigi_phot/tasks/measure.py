"""MeasureImage: one frame measured against the catalogue (or its rejection recorded).

A rejection is remembered (the frame is not tried again while it is unchanged)
unless its cause is the frame's environment rather than its content: permission
denied, an I/O error. Such a frame is rejected for the current run only: beside
its rejection record, ``<frame>.retry.json`` names the run, and the measurement
counts as done for that run alone, so the next run measures the frame again.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import traceback
from pathlib import Path

import luigi

from ..dataset import atomic_path, catalogue_path, measurement_dir, read_json, write_json_atomic
from .base import DatasetStage, warnings_to_log
from .catalogue import BuildCatalogue, catalogue_header
from .lock import LockDataset

__all__ = ["MeasureImage", "measurement_key", "environmental_cause", "retry_markers", "RETRY_SUFFIX"]

#: errno values that blame the frame's environment, not its content: permission denied,
#: a failing disk, a stale or timed-out network file system.
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.ESTALE, errno.ETIMEDOUT}
#: Beside `<frame>.phot.fits`: the frame was rejected for an environmental cause by the run named inside.
RETRY_SUFFIX = ".retry.json"
_PHOT_SUFFIX = ".phot.fits"

_KEYS: dict[tuple, str] = {}


def measurement_key(red_dir: Path, cfg) -> str:
    """Key of the per-frame results: the measurement settings and the catalogue build."""
    cpath = catalogue_path(red_dir)
    try:
        mtime = cpath.stat().st_mtime_ns
    except FileNotFoundError:
        mtime = None
    cache_key = (str(cpath), mtime, cfg.measurement_key())
    if cache_key not in _KEYS:
        hdr = catalogue_header(cpath) if mtime is not None else None
        cat_id = hdr.get("CATID", "none") if hdr is not None else "none"
        _KEYS[cache_key] = hashlib.sha256(f"{cfg.measurement_key()}:{cat_id}".encode()).hexdigest()[:12]
    return _KEYS[cache_key]


def header_wcs_error(info, cat, m, tolerance_arcsec: float = 5.0) -> str | None:
    """A warning when the frame's header WCS puts the target more than `tolerance_arcsec`
    away from where the aligned catalogue stars put it (None when it agrees, or has no WCS)."""
    if info.wcs is None:
        return None
    t = cat.target_index
    x, y = float(m.columns["x"][t]), float(m.columns["y"][t])
    method = m.header.get("ALN_METH", ("?",))[0]
    what = "ignored: aligned on the star pattern" if method == "pattern" else "corrected by the alignment"
    try:
        ra, dec = float(cat.stars["ra"][t]), float(cat.stars["dec"][t])
        wx, wy = info.wcs.all_world2pix([[ra, dec]], 0)[0]
        if not (math.isfinite(wx) and math.isfinite(wy)):
            raise ValueError
    except Exception:
        return f"header WCS cannot place the target ({what})"
    scale = info.pixel_scale_arcsec or cat.pixel_scale_arcsec
    off = math.hypot(wx - x, wy - y) * scale
    if off <= tolerance_arcsec:
        return None
    size = f"{off / 3600:.2f} deg" if off >= 3600 else f"{off / 60:.1f} arcmin" if off >= 60 else f"{off:.1f} arcsec"
    return (f"header WCS is off by {size} at the target (puts it at pixel {wx:.0f}, {wy:.0f}; "
            f"the stars put it at {x:.0f}, {y:.0f}): {what}")


def environmental_cause(exc: BaseException, frame_path: Path) -> bool:
    """True when a frame could not be used because of its environment (it cannot be
    read: permission denied, an I/O error) rather than its content: an OSError with
    such an errno anywhere in the exception's chain (causes and contexts, which
    ``raise ... from None`` keeps), or a frame that exists but cannot be read now."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return os.path.lexists(frame_path) and not os.access(frame_path, os.R_OK)


def retry_markers(red_dir: Path, key: str) -> dict[str, dict]:
    """{frame: marker} for the current frames of red_dir that a run rejected for an
    environmental cause (under measurement key `key`); a marker holds 'run_id' and 'reason'."""
    found = {}
    for marker in measurement_dir(red_dir, key).glob(f"*{RETRY_SUFFIX}"):
        frame = marker.name[: -len(RETRY_SUFFIX)]
        data = read_json(marker)
        if data is not None and not frame.startswith(".") and (red_dir / frame).exists():
            found[frame] = data
    return found


class _FreshTarget(luigi.LocalTarget):
    """A measurement file at least as new as the frame it was made from, and not a
    rejection for an environmental cause made by another run (that one is retried)."""

    def __init__(self, path, source, run_id: str):
        super().__init__(str(path))
        self.source = source
        self.run_id = run_id

    @property
    def retry_path(self) -> Path:
        path = Path(self.path)
        return path.with_name(path.name[: -len(_PHOT_SUFFIX)] + RETRY_SUFFIX)

    def exists(self) -> bool:
        try:
            if os.stat(self.path).st_mtime_ns < os.stat(self.source).st_mtime_ns:
                return False
        except OSError:
            return False
        marker = read_json(self.retry_path)
        return marker is None or marker.get("run_id") == self.run_id


class MeasureImage(DatasetStage):
    """Measure every catalogue star on one frame."""

    image = luigi.Parameter(description="frame file name inside red_dir")

    def requires(self):
        return {"lock": LockDataset(red_dir=self.red_dir, run_id=self.run_id),
                "catalogue": BuildCatalogue(red_dir=self.red_dir, run_id=self.run_id)}

    def output(self):
        key = measurement_key(self.red, self.config)
        return _FreshTarget(measurement_dir(self.red, key) / f"{self.image}{_PHOT_SUFFIX}", self.red / self.image,
                            self.run_id)

    @warnings_to_log
    def run(self):
        from ..photometry.catalogue import Catalogue
        from ..photometry.frames import FrameError, load_frame
        from ..photometry.lightcurve import write_measurement, write_rejection
        from ..photometry.measure import FrameRejected, MeasureSettings, measure_frame

        self.check_lock()
        cfg = self.config
        target = self.output()
        out, retry = Path(target.path), target.retry_path
        path = self.red / self.image

        def progress(fraction, message):
            self.report_progress(int(100 * fraction))
            self.report_status(f"{self.image}: {message}")

        with self.timed() as t:
            progress(0.0, "reading")
            info = None
            try:
                frame = load_frame(path, cfg.camera)
                info = frame.info
                if info.notes:
                    self.note(f"{self.image}: " + "; ".join(info.notes), 30)
                cat = Catalogue.load(catalogue_path(self.red))
                try:
                    m = measure_frame(frame, cat, MeasureSettings.from_config(cfg.photometry), progress=progress)
                except (FrameRejected, MemoryError):
                    raise
                except Exception as exc:
                    # bad pixels we did not foresee must not stop the other frames (or the
                    # dataset): reject this one, with the traceback for whoever fixes it
                    self.log.warning(f"[{self.run_id}] {self.task_family}: {self.image}: measurement raised:\n"
                                     + traceback.format_exc().rstrip())
                    raise FrameRejected(f"measurement failed ({type(exc).__name__}: "
                                        f"{' '.join(str(exc).split())[:200]}); traceback in the log") from None
                del frame
            except (FrameError, FrameRejected) as exc:
                reason = exc.problem if isinstance(exc, FrameError) else str(exc)
                environmental = environmental_cause(exc, path)
                if environmental:  # the marker first: a rejection file alone would be remembered
                    write_json_atomic(retry, {"frame": self.image, "run_id": self.run_id, "reason": reason})
                with atomic_path(out) as tmp:
                    write_rejection(tmp, self.image, reason, mjd_mid=info.mjd_mid if info else None)
                if environmental:
                    self.note(f"{self.image}: rejected: {reason} (a cause outside the frame: "
                              "it will be tried again on the next run)", 30)
                else:
                    retry.unlink(missing_ok=True)
                    self.note(f"{self.image}: rejected: {reason}", 30)
                return
            with atomic_path(out) as tmp:
                write_measurement(tmp, m.columns, m.header)
            retry.unlink(missing_ok=True)
        notes = list(m.notes)
        wcs_note = header_wcs_error(info, cat, m)
        if wcs_note:
            notes.append(wcs_note)
        if notes:
            self.note(f"{self.image}: " + "; ".join(notes), 30)
        h = m.header
        steps = ", ".join(f"{k} {v:.2f}" for k, v in m.timings.items())
        self.note(f"{self.image}: measured {len(m.columns['flux'])} stars in {t.seconds:.2f} s "
                  f"(aligned {h['ALN_METH'][0]} rms {h['ALN_RMS'][0]:.3f} px on {h['ALN_N'][0]} stars, "
                  f"FWHM {h['FWHMAS'][0]:.2f}\", scale {h['PHSCALE'][0]:.3f}; {steps})")
        progress(1.0, "done")
