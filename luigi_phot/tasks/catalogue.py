"""BuildCatalogue: choose the reference frame and build the star catalogue."""

from __future__ import annotations

import luigi
from astropy.io import fits

from ..dataset import atomic_path, catalogue_path
from .base import DatasetStage, StageError
from .lock import LockDataset

__all__ = ["BuildCatalogue", "catalogue_header"]


def catalogue_header(path) -> fits.Header | None:
    try:
        return fits.getheader(path, 0)
    except (OSError, ValueError):
        return None


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
    frame is still in the dataset, and so is its finder chart."""

    def __init__(self, path, key, target_name):
        super().__init__(str(path))
        self.key = key
        self.target_name = target_name

    def exists(self) -> bool:
        hdr = catalogue_header(self.path)
        if hdr is None or hdr.get("CATKEY") != self.key:
            return False
        from pathlib import Path

        red = Path(self.path).parent.parent
        return ((red / str(hdr.get("REFIMAGE"))).is_file()
                and finder_chart_path(red, self.target_name, str(hdr.get("FILTER"))).is_file())


class BuildCatalogue(DatasetStage):
    """Reference frame and catalogue of every star on it, with the target."""

    def requires(self):
        return LockDataset(red_dir=self.red_dir, run_id=self.run_id)

    def output(self):
        return _CatalogueTarget(catalogue_path(self.red), self.config.catalogue_key(), self.config.target.name)

    def run(self):
        from ..photometry.catalogue import CatalogueError, build_catalogue, choose_reference
        from ..photometry.frames import FrameError, list_frames, load_frame

        self.check_lock()
        if self._redraw_finder_only():
            return
        cfg = self.config
        frames = list_frames(self.red)
        if not frames:
            raise StageError(f"{self.red}: no frames (*.fits, *.fits.fz, ...) in the dataset directory")
        configured = cfg.photometry.reference_image
        previous = catalogue_header(catalogue_path(self.red))
        if configured is None and previous is not None and (self.red / str(previous.get("REFIMAGE"))).is_file():
            configured = str(previous["REFIMAGE"])  # keep the reference: star ids stay stable
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
            reason = reason_prefix or choice.reason
            self.note(f"reference frame {choice.path.name} ({reason}); dataset filter {choice.filter_name}")
            self.report_status(f"building the catalogue on {choice.path.name}")
            try:
                frame = load_frame(choice.path, cfg.camera)
                cat = build_catalogue(frame, cfg.target.ra_deg, cfg.target.dec_deg, cfg.photometry,
                                      key=cfg.catalogue_key(), gaia_cache=self._gaia_cache(),
                                      header_scatter=lambda: self._header_scatter(frames, choice))
            except (FrameError, CatalogueError) as exc:
                raise StageError(f"reference frame {exc}") from None
        cat.filter_name = choice.filter_name
        for n in cat.notes:
            self.note(n)
        for w in cat.warnings:
            self.note(w, 30)
        self._write_finder(frame, cat)
        with atomic_path(catalogue_path(self.red)) as tmp:
            cat.save(tmp)
        self.note(f"catalogue of {len(cat.stars)} stars (target row {cat.target_index}) built in {t.seconds:.1f} s")

    def _redraw_finder_only(self) -> bool:
        """The catalogue is current and only its finder chart is missing: draw it again
        (a new catalogue would have new ids, and every frame would be measured again)."""
        from ..photometry.catalogue import Catalogue
        from ..photometry.frames import FrameError, load_frame

        hdr = catalogue_header(catalogue_path(self.red))
        if hdr is None or hdr.get("CATKEY") != self.config.catalogue_key():
            return False
        try:
            cat = Catalogue.load(catalogue_path(self.red))
            frame = load_frame(self.red / cat.reference_image, self.config.camera)
        except (OSError, FrameError, KeyError):
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
        with atomic_path(path) as tmp:
            plot_finder_chart(frame.data_e, cat.wcs, cat.stars, cat.facts, scale, cat.psf.fwhm_pix, radii, tmp,
                              f"{self.config.target.name} {cat.filter_name}: finder chart on {cat.reference_image}")
        self.note(f"finder chart {path.name}")


def _no_wcs_hint(message: str, cfg) -> str:
    """What a dataset of frames without a WCS needs, when that is why no reference was found."""
    if "WCS" not in message:
        return ""
    if cfg.photometry.astrometry == "header":
        return ("; frames without a WCS need an astrometric catalogue to solve the reference: "
                "photometry.astrometry auto, gaia or catalogue (with photometry.catalogue_file)")
    return "; frames without a WCS also need a pixel scale (camera.pixel_scale_arcsec) to be solved"
