"""BuildCatalogue: choose the reference frame and build the star catalogue.

The catalogue is kept while the configuration that shaped it is unchanged and
its reference frame is still in red_dir with the same content. When it is built
again on another reference (or on new content of the same one), the new
reference is calibrated against the old catalogue (``reference_change.py``) and
the log says how the zero point moved to keep the magnitudes on the old scale.
"""

from __future__ import annotations

import luigi
import numpy as np
from astropy.io import fits

from ..dataset import atomic_path, catalogue_header, catalogue_path, frame_identity, measurement_path
from ..names import UnsafeName, name_from_header, safe_token, shown
from .base import DatasetStage, StageError, warnings_to_log
from .lock import LockDataset
from .memory import for_large_arrays

__all__ = ["BuildCatalogue"]


def reference_name(header: fits.Header | None) -> str | None:
    """The reference frame's exact file name in a catalogue header."""
    return None if header is None else name_from_header(header, "REFIMAGE", "REFIMHEX")


def _frame_problems(frames, camera, shown: int = 6) -> str:
    """'; a.fits: empty file; b.fits: ...' for the frames whose header is unusable (the
    others had no stars near the target, or no WCS that puts it on the frame)."""
    from ..photometry.frames import FrameError, read_frame_info

    problems = []
    for path in frames:
        try:
            read_frame_info(path, camera)
        except FrameError as exc:
            problems.append(str(exc))
    if not problems:
        return ""
    more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
    return " (" + "; ".join(problems[:shown]) + more + ")"


def finder_chart_path(red_dir, target_name: str, filter_name: str):
    """<red_dir>/<target>_<filter>_finder.png"""
    from ..photometry.lightcurve import product_names

    return red_dir / product_names(target_name, filter_name)["finder_png"]


class _CatalogueTarget(luigi.LocalTarget):
    """The catalogue exists, was built for the current configuration, its reference
    frame is still in the dataset with the same content, and so is its finder chart."""

    def __init__(self, path, key, target_name):
        super().__init__(str(path))
        self.key = key
        self.target_name = target_name

    def exists(self) -> bool:
        hdr = catalogue_header(self.path)
        if hdr is None or hdr.get("CATKEY") != self.key:
            return False
        from pathlib import Path

        name = reference_name(hdr)
        if not name or "/" in name:
            return False
        red = Path(self.path).parent.parent
        ident = frame_identity(red, name)
        return (ident.readable and ident.digest == hdr.get("REFDIGST")
                and finder_chart_path(red, self.target_name, str(hdr.get("FILTER"))).is_file())


class BuildCatalogue(DatasetStage):
    """Reference frame and catalogue of every star on it, with the target."""

    def requires(self):
        return LockDataset(red_dir=self.red_dir, run_id=self.run_id)

    def output(self):
        return _CatalogueTarget(catalogue_path(self.red), self.config.catalogue_key(), self.config.target.name)

    @warnings_to_log
    @for_large_arrays
    def run(self):
        from ..photometry.catalogue import CatalogueError, build_catalogue, choose_reference
        from ..photometry.frames import FrameError, list_frames

        self.check_lock()
        if self._redraw_finder_only():
            return
        cfg = self.config
        frames = list_frames(self.red)
        if not frames:
            raise StageError(f"{self.red}: no frames (*.fits, *.fits.fz, ...) in the dataset directory")
        configured = cfg.photometry.reference_image
        previous = self._previous()
        kept = previous.reference_image if previous is not None else None
        if configured is None and kept and "/" not in kept and (self.red / kept).is_file():
            configured = kept  # keep the reference: star ids stay stable
            reason_prefix = "kept from the previous catalogue"
        else:
            reason_prefix = None
        self.report_status(f"choosing the reference among {len(frames)} frames")
        with self.timed() as t:
            try:
                choice = choose_reference(frames, cfg.camera, cfg.target.ra_deg, cfg.target.dec_deg,
                                          configured=configured, allow_no_wcs=cfg.photometry.astrometry != "header")
            except CatalogueError as exc:
                hint = _no_wcs_hint(str(exc), cfg)
                if configured is not None:
                    raise StageError(f"{self.red}: {exc}{hint}") from None
                raise StageError(f"{self.red}: no usable frame among the {len(frames)} frames: {exc}{hint}"
                                 f"{_frame_problems(frames, cfg.camera)}") from None
            name = choice.path.name
            try:
                token = safe_token(choice.filter_name, "FILTER", shown(name), rewrite=True)
            except UnsafeName as exc:
                raise StageError(f"{self.red}: {exc}") from None
            reason = choice.reason if reason_prefix is None else choice.reason.replace(
                "configured (photometry.reference_image)", reason_prefix)   # (and how its WCS was had)
            self.note(f"reference frame {shown(name)} ({reason}); dataset filter {choice.filter_name}"
                      + (f" (written {token} in file names)" if token != choice.filter_name else ""))
            self.report_status(f"building the catalogue on {shown(name)}")
            ident = frame_identity(self.red, name)
            try:
                frame = choice.load(cfg.camera)      # with a WCS borrowed from another frame if need be
                cat = build_catalogue(frame, cfg.target.ra_deg, cfg.target.dec_deg, cfg.photometry,
                                      key=cfg.catalogue_key(), gaia_cache=self._gaia_cache(),
                                      header_scatter=lambda: self._header_scatter(frames, choice))
            except (FrameError, CatalogueError) as exc:
                raise StageError(f"reference frame {exc}") from None
        cat.filter_name = choice.filter_name
        cat.reference_digest = ident.digest or ""
        if previous is not None:
            self._carry_zero_point(previous, cat)
        for n in cat.notes:
            self.note(n)
        for w in cat.warnings:
            self.note(w, 30)
        self._write_finder(frame, cat)
        with atomic_path(catalogue_path(self.red), inside=self.red) as tmp:
            cat.save(tmp)
        steps = ", ".join(f"{k} {v:.2f}" for k, v in cat.timings.items())
        self.note(f"catalogue of {len(cat.stars)} stars (target row {cat.target_index}) built in {t.seconds:.1f} s"
                  + (f" ({steps} s)" if steps else ""))

    def _redraw_finder_only(self) -> bool:
        """The catalogue is current and only its finder chart is missing: draw it again
        (a new catalogue would have new ids, and every frame would be measured again)."""
        from ..photometry.catalogue import Catalogue
        from ..photometry.frames import FrameError, load_frame

        hdr = catalogue_header(catalogue_path(self.red))
        if hdr is None or hdr.get("CATKEY") != self.config.catalogue_key():
            return False
        name = reference_name(hdr)
        if not name or "/" in name or frame_identity(self.red, name).digest != hdr.get("REFDIGST"):
            return False   # the reference itself changed: the catalogue is built again
        try:
            cat = Catalogue.load(catalogue_path(self.red))
            frame = load_frame(self.red / cat.reference_image, self.config.camera)
        except (OSError, FrameError, KeyError, UnsafeName):
            return False
        self._write_finder(frame, cat)
        return True

    def _gaia_cache(self):
        return self.config.photometry.gaia_cache_file or catalogue_path(self.red).parent / "gaia_dr3.ecsv"

    def _header_scatter(self, frames, choice) -> float:
        """1-sigma error of the reference's header WCS, from how the frames' headers disagree."""
        from ..photometry.astrometry import header_scatter_of_frames
        from ..photometry.frames import FrameError, read_frame_info

        others = []
        for path in frames:
            if path != choice.path:
                try:
                    others.append(read_frame_info(path, self.config.camera))
                except FrameError:
                    continue
        return header_scatter_of_frames(choice.info, others, self.config.target.ra_deg, self.config.target.dec_deg)

    def _write_finder(self, frame, cat) -> None:
        """<target>_<filter>_finder.png: the reference around the target with its aperture."""
        from ..photometry.finder import plot_finder_chart

        p = self.config.photometry
        scale = cat.pixel_scale_arcsec
        r_ap = p.aperture_arcsec / scale
        grow = p.aperture_fwhm_multiple * cat.psf.fwhm_pix / r_ap if p.aperture_fwhm_multiple else 1.0
        radii = (r_ap * grow, p.annulus()[0] / scale * grow, p.annulus()[1] / scale * grow)
        path = finder_chart_path(self.red, self.config.target.name, cat.filter_name)
        with atomic_path(path, inside=self.red) as tmp:
            plot_finder_chart(frame.data_e, cat.wcs, cat.stars, cat.facts, scale, cat.psf.fwhm_pix, radii, tmp,
                              f"{self.config.target.name} {cat.filter_name}: finder chart on "
                              f"{shown(cat.reference_image)}")
        self.note(f"finder chart {path.name}")

    def _previous(self):
        """The catalogue this build replaces (None when there is none or it cannot be read)."""
        from ..photometry.catalogue import Catalogue

        if catalogue_header(catalogue_path(self.red)) is None:
            return None
        try:
            return Catalogue.load(catalogue_path(self.red))
        except Exception:  # a damaged catalogue is simply built again
            return None

    def _carry_zero_point(self, previous, cat) -> None:
        """Keep the magnitude scale: calibrate the new reference against the old one, log
        the change and its effect on the zero point (a warning when the reference changed)."""
        from ..photometry.reference_change import calibrate_on_measurements, calibrate_reference_change

        old, new = previous.reference_image, cat.reference_image
        if old == new and previous.reference_digest in (cat.reference_digest, ""):
            # the same frame: the same scale (a catalogue of an earlier version kept no digest)
            cat.zp_offset = previous.zp_offset
            return
        why = ("its content changed" if old == new else
               "it is no longer in red_dir" if not (self.red / old).is_file() else "the configuration changed")
        zp0 = self.config.photometry.default_zero_point
        if self.config.photometry.catalogue_file is not None:
            cat.zp_offset = previous.zp_offset
            self.note(f"reference frame changed from {shown(old)} to {shown(new)} ({why}); the zero point comes "
                      "from the external catalogue", 30)
            return
        try:
            measured = self._reference_measurements(previous, new, cat.reference_digest)
            if measured is not None:
                step, how = calibrate_on_measurements(previous, *measured), "measured on both against the old catalogue"
            else:
                step, how = calibrate_reference_change(previous, cat, self.config.photometry), \
                    "matched by sky position"
        except ValueError as exc:
            cat.zp_offset = previous.zp_offset
            self.note(f"reference frame changed from {shown(old)} to {shown(new)} ({why}); the new reference "
                      f"cannot be calibrated against the old ({exc}): magnitudes may shift", 30)
            return
        cat.zp_offset = previous.zp_offset + step.offset_mag
        brighter = "brighter" if step.offset_mag > 0 else "fainter"
        self.note(f"reference frame changed from {shown(old)} to {shown(new)} ({why}): the new reference sees the "
                  f"stars {abs(step.offset_mag):.3f} +- {step.offset_err_mag:.3f} mag {brighter} ({step.n_stars} stars "
                  f"{how}); zero point {zp0 + previous.zp_offset:.3f} -> {zp0 + cat.zp_offset:.3f}, "
                  "so that magnitudes stay on the previous scale", 30)

    def _reference_measurements(self, previous, new_name: str, new_digest: str):
        """The old and the new reference frames' measurements against the previous catalogue
        (both were frames of the last reduction): ((flux, flags, exptime), (...)), or None."""
        from ..photometry.lightcurve import read_measurement

        found = []
        for name, digest in ((previous.reference_image, previous.reference_digest), (new_name, new_digest)):
            for key_dir in sorted((self.red / "photometry" / "frames").glob("*")):
                path = measurement_path(self.red, key_dir.name, name, digest)
                try:
                    record = read_measurement(path, columns=("flux", "flags"))
                except (OSError, KeyError, ValueError):
                    continue
                if record.columns is None:
                    continue
                facts = record.facts
                if facts.catalogue_id == previous.catalogue_id and np.isfinite(facts.exptime_s) \
                        and len(record.columns["flux"]) == len(previous.stars):
                    found.append((np.asarray(record.columns["flux"], float), np.asarray(record.columns["flags"]),
                                  facts.exptime_s))
                    break
        return tuple(found) if len(found) == 2 else None


def _no_wcs_hint(message: str, cfg) -> str:
    """What a dataset of frames without a WCS needs, when that is why no reference was found."""
    if "WCS" not in message:
        return ""
    if cfg.photometry.astrometry == "header":
        return ("; frames without a WCS need an astrometric catalogue to solve the reference: "
                "photometry.astrometry auto, gaia or catalogue (with photometry.catalogue_file)")
    return "; frames without a WCS also need a pixel scale (camera.pixel_scale_arcsec) to be solved"
