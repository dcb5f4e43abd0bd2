"""Readers of a reduced dataset's products, one per file, shared by the text summary
(:mod:`.text`), the dataset's HTML page (:mod:`.page`) and the night overview
(:mod:`.overview`).

Each reader takes a path and returns a small object of facts (or raises: the
caller says on its line or in its section that the file cannot be read). Nothing
here writes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dataset import PRODUCTS_DIR
from ..names import name_from_header, shown
from ..photometry import flags as F

__all__ = ["LightCurve", "PointCounts", "Rejection", "AllStars", "CatalogueFacts", "RunLog", "read_lightcurve",
           "count_lightcurve_rows", "read_rejected", "read_all_stars", "read_catalogue", "read_run_log",
           "count_csv_rows", "measurement_dir_in_use", "measurement_outcomes", "reference_instrument",
           "software_versions", "finite_or_none"]


def finite_or_none(value) -> float | None:
    """A header or meta value as a finite float (None for absent, 'NaN', text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------
# the light curve (<target>_<filter>_lc.ecsv) and the TOM's CSV
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PointCounts:
    """The light curve's rows: every row is one frame with a time."""

    n_points: int          # rows of the light curve
    n_good: int            # a magnitude and no severe flag
    n_flagged: int         # a severe flag other than frame_rejected (kept in the files, not uploaded)
    n_rejected: int        # rows of rejected frames (flag frame_rejected)


@dataclass(frozen=True)
class LightCurve:
    table: object          # astropy Table, sorted by mjd

    @property
    def meta(self) -> dict:
        return dict(self.table.meta)

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.table[name], float)

    @property
    def flags(self) -> np.ndarray:
        return np.asarray(self.table["flags"], int)

    def good(self) -> np.ndarray:
        return np.isfinite(self.column("mag")) & ((self.flags & F.SEVERE) == 0)

    def rejected(self) -> np.ndarray:
        return (self.flags & F.FRAME_REJECTED) != 0

    def counts(self) -> PointCounts:
        severe = (self.flags & F.SEVERE) != 0
        rejected = self.rejected()
        return PointCounts(len(self.table), int(self.good().sum()), int((severe & ~rejected).sum()),
                           int(rejected.sum()))


def read_lightcurve(path: Path) -> LightCurve:
    from astropy.table import Table

    table = Table.read(path, format="ascii.ecsv")
    table.sort("mjd")
    return LightCurve(table)


def count_lightcurve_rows(path: Path) -> int:
    """Rows of a light-curve ECSV without parsing it (its data lines less the column
    names): cheap enough for an overview of hundreds of datasets. Raises OSError."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = sum(1 for line in fh if line.strip() and not line.startswith("#"))
    return max(lines - 1, 0)


def count_csv_rows(path: Path) -> int:
    """Data rows of a CSV with a header line (the TOM's CSV)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        return max(sum(1 for line in fh if line.strip()) - 1, 0)


# --------------------------------------------------------------------------
# rejected frames (<target>_<filter>_rejected.csv, or the measurement records)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    image: str             # as shown (printable)
    reason: str


def read_rejected(path: Path) -> list[Rejection]:
    from astropy.table import Table

    if not path.stat().st_size:
        return []
    table = Table.read(path, format="ascii.csv", converters={"image": str, "reason": str})
    if len(table) == 0:
        return []
    return [Rejection(str(row["image"]), str(row["reason"])) for row in table]


def measurement_dir_in_use(red: Path) -> Path:
    """The directory of the current per-frame tables (the most recently written key)."""
    frames = red / PRODUCTS_DIR / "frames"
    keys = [d for d in frames.glob("*") if d.is_dir()]
    return max(keys, key=lambda d: d.stat().st_mtime_ns) if keys else frames


def measurement_outcomes(red: Path) -> tuple[int, list[Rejection]]:
    """From the per-frame records of the current measurements (read when the light curve,
    and so its rejected list, could not be made): how many frames were measured, and the
    rejected ones with their reasons, sorted by name. Reads headers only."""
    from astropy.io import fits

    n_measured, rejected = 0, []
    for path in sorted(measurement_dir_in_use(red).glob("*.phot.fits")):
        try:
            header = fits.getheader(path, "PHOT")
        except (OSError, KeyError, ValueError):
            continue
        if "REJECT" in header:
            rejected.append(Rejection(shown(name_from_header(header) or path.name), str(header["REJECT"])))
        else:
            n_measured += 1
    return n_measured, sorted(rejected, key=lambda r: r.image)


# --------------------------------------------------------------------------
# the all-stars file (photometry/<target>_<filter>_all_stars.fits)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class AllStars:
    frames: object                 # astropy Table FRAMES: one row per measured frame
    n_frames: int
    n_stars: int
    n_constant: int                # comparison stars with 3 good points
    noise_ratio: float | None      # their median measured RMS / predicted


def read_all_stars(path: Path) -> AllStars:
    """FRAMES and STARS (the FLUX images are not read: only their shape from the header)."""
    from astropy.io import fits
    from astropy.table import Table

    with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        n_frames, n_stars = hdul["FLUX"].shape
        frames = Table(hdul["FRAMES"].data)
        stars = hdul["STARS"].data
        ok = (stars["comparison"].astype(bool) & (stars["mean_flux"] > 0) & np.isfinite(stars["rms_flux"])
              & np.isfinite(stars["median_flux_err"]) & (stars["n_good"] >= 3))
        ratio = stars["rms_flux"][ok] / stars["median_flux_err"][ok]
    return AllStars(frames, n_frames, n_stars, int(ok.sum()), float(np.median(ratio)) if ok.any() else None)


# --------------------------------------------------------------------------
# the catalogue's header (photometry/catalogue.fits): reference, astrometry, identification
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogueFacts:
    n_stars: int
    reference_image: str | None
    filter_name: str | None
    pixel_scale_arcsec: float | None
    psf_fwhm_pix: float | None
    reference_mjd: float | None
    reference_sky_e: float | None
    astrometry_source: str | None          # ASTSRC: catalogue, gaia, header...
    astrometry_refined: bool
    astrometry_n_matched: int | None
    astrometry_rms_arcsec: float | None
    astrometry_sigma_arcsec: float | None  # the WCS's 1-sigma error used in the identification
    target_ra_deg: float | None            # as configured
    target_dec_deg: float | None
    target_separation_arcsec: float | None
    match_radius_arcsec: float | None
    target_detected: bool
    target_ambiguous: bool

    @property
    def psf_fwhm_arcsec(self) -> float | None:
        if self.psf_fwhm_pix is None or self.pixel_scale_arcsec is None:
            return None
        return self.psf_fwhm_pix * self.pixel_scale_arcsec


def read_catalogue(path: Path) -> CatalogueFacts:
    from astropy.io import fits

    with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        h = hdul[0].header
        n_stars = int(hdul[1].header.get("NAXIS2", 0))
    n_matched = finite_or_none(h.get("ASTNMAT"))
    return CatalogueFacts(
        n_stars=n_stars, reference_image=name_from_header(h, "REFIMAGE", "REFIMHEX"),
        filter_name=None if h.get("FILTER") is None else str(h.get("FILTER")),
        pixel_scale_arcsec=finite_or_none(h.get("PIXSCALE")), psf_fwhm_pix=finite_or_none(h.get("PSFFWHM")),
        reference_mjd=finite_or_none(h.get("MJDMID")), reference_sky_e=finite_or_none(h.get("SKY_E")),
        astrometry_source=None if h.get("ASTSRC") is None else str(h.get("ASTSRC")),
        astrometry_refined=bool(h.get("ASTREF", False)),
        astrometry_n_matched=None if n_matched is None else int(n_matched),
        astrometry_rms_arcsec=finite_or_none(h.get("ASTRMS")), astrometry_sigma_arcsec=finite_or_none(h.get("ASTUNC")),
        target_ra_deg=finite_or_none(h.get("TGTRA")), target_dec_deg=finite_or_none(h.get("TGTDEC")),
        target_separation_arcsec=finite_or_none(h.get("TGTSEP")), match_radius_arcsec=finite_or_none(h.get("TGTRAD")),
        target_detected=bool(h.get("TGTDET", False)), target_ambiguous=bool(h.get("TGTAMBIG", False)))


def reference_instrument(red: Path, reference_image: str | None) -> str | None:
    """'INSTRUME on TELESCOP at SITEID' from the reference frame's header (None when the
    frame or the keywords are not there). Reads one header, never the pixels."""
    from astropy.io import fits

    if not reference_image or "/" in reference_image or reference_image in (".", ".."):
        return None
    try:
        with fits.open(red / reference_image, memmap=False, lazy_load_hdus=True) as hdul:
            for hdu in hdul:
                h = hdu.header
                if h.get("INSTRUME") or h.get("TELESCOP"):
                    parts = [str(h.get("INSTRUME") or "?")]
                    parts += [f"on {h['TELESCOP']}"] if h.get("TELESCOP") else []
                    parts += [f"at {h['SITEID']}"] if h.get("SITEID") else []
                    return " ".join(parts)
    except (OSError, ValueError, TypeError):
        return None
    return None


# --------------------------------------------------------------------------
# the dataset's log (aperture_pipeline.log): one run's lines
# --------------------------------------------------------------------------

_LEVEL = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL)\b")
#: the log's last part read (a long-lived dataset's log grows by every run)
_LOG_TAIL_BYTES = 2_000_000


@dataclass(frozen=True)
class RunLog:
    run_id: str | None
    lines: list[str]               # the run's lines ([run_id] marks them); the whole tail when no run id

    @property
    def warnings(self) -> list[str]:
        """Lines at WARNING level or above."""
        return [ln for ln in self.lines if _LEVEL.match(ln)]


def read_run_log(path: Path, run_id: str | None) -> RunLog:
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - _LOG_TAIL_BYTES))
        text = fh.read().decode("utf-8", errors="replace")
    lines = text.splitlines()[1 if size > _LOG_TAIL_BYTES else 0:]
    mine = [ln for ln in lines if run_id and (f"[{run_id}]" in ln or f"run {run_id}:" in ln)]
    return RunLog(run_id, mine or lines)


# --------------------------------------------------------------------------
# software
# --------------------------------------------------------------------------


def software_versions() -> dict[str, str]:
    """Versions of Python and the packages that make the numbers (read from the installed
    distributions' metadata: nothing is imported)."""
    import importlib.metadata
    import platform

    versions = {"Python": platform.python_version()}
    for name in ("luigi_phot", "numpy", "scipy", "astropy", "photutils", "matplotlib", "luigi"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
