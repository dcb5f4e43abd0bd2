"""BuildCatalogue: choose the reference frame and build the star catalogue."""

from __future__ import annotations

import luigi
from astropy.io import fits

from ..dataset import atomic_path, catalogue_path
from .base import DatasetStage, StageError, warnings_to_log
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


class _CatalogueTarget(luigi.LocalTarget):
    """The catalogue exists, was built for the current configuration, and its
    reference frame is still in the dataset."""

    def __init__(self, path, key):
        super().__init__(str(path))
        self.key = key

    def exists(self) -> bool:
        hdr = catalogue_header(self.path)
        if hdr is None or hdr.get("CATKEY") != self.key:
            return False
        from pathlib import Path

        return (Path(self.path).parent.parent / str(hdr.get("REFIMAGE"))).is_file()


class BuildCatalogue(DatasetStage):
    """Reference frame and catalogue of every star on it, with the target."""

    def requires(self):
        return LockDataset(red_dir=self.red_dir, run_id=self.run_id)

    def output(self):
        return _CatalogueTarget(catalogue_path(self.red), self.config.catalogue_key())

    @warnings_to_log
    def run(self):
        from ..photometry.catalogue import CatalogueError, build_catalogue, choose_reference
        from ..photometry.frames import FrameError, list_frames, load_frame

        self.check_lock()
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
                                          configured=configured)
            except CatalogueError as exc:
                if configured is not None:
                    raise StageError(f"{self.red}: {exc}") from None
                raise StageError(f"{self.red}: no usable frame among the {len(frames)} frames: {exc}"
                                 f"{_frame_problems(frames, cfg.camera)}") from None
            reason = reason_prefix or choice.reason
            self.note(f"reference frame {choice.path.name} ({reason}); dataset filter {choice.filter_name}")
            self.report_status(f"building the catalogue on {choice.path.name}")
            try:
                frame = load_frame(choice.path, cfg.camera)
                cat = build_catalogue(frame, cfg.target.ra_deg, cfg.target.dec_deg, cfg.photometry,
                                      key=cfg.catalogue_key())
            except (FrameError, CatalogueError) as exc:
                raise StageError(f"reference frame {exc}") from None
        cat.filter_name = choice.filter_name
        with atomic_path(catalogue_path(self.red)) as tmp:
            cat.save(tmp)
        for n in cat.notes:
            self.note(n)
        self.note(f"catalogue of {len(cat.stars)} stars (target row {cat.target_index}) built in {t.seconds:.1f} s")
