"""MeasureImage: one frame measured against the catalogue (or its rejection recorded)."""

from __future__ import annotations

import hashlib
import math
import os
import traceback
from pathlib import Path

import luigi

from ..dataset import atomic_path, catalogue_path, measurement_dir
from .base import DatasetStage
from .catalogue import BuildCatalogue, catalogue_header
from .lock import LockDataset

__all__ = ["MeasureImage", "measurement_key"]

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


class _FreshTarget(luigi.LocalTarget):
    """A measurement file at least as new as the frame it was made from."""

    def __init__(self, path, source):
        super().__init__(str(path))
        self.source = source

    def exists(self) -> bool:
        try:
            return os.stat(self.path).st_mtime_ns >= os.stat(self.source).st_mtime_ns
        except OSError:
            return False


class MeasureImage(DatasetStage):
    """Measure every catalogue star on one frame."""

    image = luigi.Parameter(description="frame file name inside red_dir")

    def requires(self):
        return {"lock": LockDataset(red_dir=self.red_dir, run_id=self.run_id),
                "catalogue": BuildCatalogue(red_dir=self.red_dir, run_id=self.run_id)}

    def output(self):
        key = measurement_key(self.red, self.config)
        return _FreshTarget(measurement_dir(self.red, key) / f"{self.image}.phot.fits", self.red / self.image)

    def run(self):
        from ..photometry.catalogue import Catalogue
        from ..photometry.frames import FrameError, load_frame
        from ..photometry.lightcurve import write_measurement, write_rejection
        from ..photometry.measure import FrameRejected, MeasureSettings, measure_frame

        self.check_lock()
        cfg = self.config
        out = Path(self.output().path)
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
                with atomic_path(out) as tmp:
                    write_rejection(tmp, self.image, reason, mjd_mid=info.mjd_mid if info else None)
                self.note(f"{self.image}: rejected: {reason}", 30)
                return
            with atomic_path(out) as tmp:
                write_measurement(tmp, m.columns, m.header)
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
