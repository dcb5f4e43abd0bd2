"""The reference frame and the dataset's star catalogue.

- :func:`choose_reference` picks the reference frame: the configured one, or
  the frame with the best ratio of seeing to sky noise among those with
  seeing no worse than the median (measured on a crop around the target, on
  star-shaped peaks only), frames with a usable WCS that covers the target and
  frames without one, which borrow it from the best frame with one through
  their star pattern (:func:`borrow_wcs`).
- :func:`build_catalogue` detects stars on the reference (matched filter),
  fits the reference PSF, measures every star's reference flux by
  simultaneous PSF photometry, refines the reference WCS against an astrometric
  catalogue (astrometry.py: a catalogue file, Gaia DR3, or the header as it is),
  gives each star its sky position, and identifies the target
  (identification.py), adding it where no star is detected. A catalogue file's
  magnitudes later set the zero point.

The catalogue is a FITS file: a primary header with the reference frame's
facts and WCS, and a STARS table. Star ids are row numbers (0-based).
"""

from __future__ import annotations

import dataclasses
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from .alignment import AlignmentError, FitStars, align
from .astrometry import AstrometryError, AstrometryRequest, compose_wcs, reference_astrometry
from ..names import name_cards, name_from_header, shown_ascii
from .background import sky_mesh
from .detection import (alignment_control_points, centroid_window_sigma, find_peaks, flag_flat_maximum, not_cosmic,
                        peak_sharpness, quick_fwhm, star_peaks, star_sharpness_limit, windowed_centroids)
from .aperture import repair_pixels
from .frames import (PIXEL_BAD, PIXEL_COSMIC, PIXEL_SATURATED, Frame, FrameError, FrameInfo, load_frame,
                     mask_defective_lines, read_frame_info)
from .identification import identify_target
from .psf import MoffatPSF, fit_fluxes, fit_psf, render_stars, stamp_radius
from .steps import Step, run_steps

__all__ = ["Catalogue", "CatalogueError", "CatalogueTuning", "ReferenceChoice", "choose_reference", "borrow_wcs", "build_catalogue",
           "psf_star_candidates"]

CATALOGUE_FORMAT = 1


class CatalogueError(Exception):
    """No catalogue can be built (no usable reference, target not covered, ...)."""


@dataclass
class Catalogue:
    stars: Table                  # id, x_ref, y_ref, ra, dec, flux_ref, flux_ref_err, snr_ref,
                                  # saturated_ref, detected, is_target, nn_dist, isolated, cat_mag
    reference_image: str
    shape: tuple[int, int]
    wcs_header: fits.Header
    pixel_scale_arcsec: float
    filter_name: str
    psf: MoffatPSF
    exptime_s: float
    mjd_mid: float
    sky_e: float
    catalogue_id: str
    key: str
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: header cards of the astrometry and the target identification (ASTxxx, TGTxxx)
    facts: dict = field(default_factory=dict)
    #: Content digest of the reference frame (a reference replaced by other pixels under
    #: the same name makes the catalogue stale).
    reference_digest: str = ""
    #: Magnitude offset added to the default zero point so that magnitudes stay on the
    #: scale of the first reference after the reference changed (see reference_change.py).
    zp_offset: float = 0.0
    #: Seconds each step of build_catalogue took (not saved).
    timings: dict = field(default_factory=dict)

    @property
    def target_index(self) -> int:
        return int(np.flatnonzero(self.stars["is_target"])[0])

    @property
    def wcs(self) -> WCS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return WCS(self.wcs_header, naxis=2)

    def alignment_stars(self, n: int = 500) -> np.ndarray:
        """Indices of n of the brightest detected stars, brightest first: among the
        brightest 2n, the isolated ones (a neighbour pulls a centroid when the seeing is
        poor), then the others. Saturated stars are among them (`saturated_ref`): the
        brightest stars of a frame are often saturated on a sharper reference, and the
        star pattern is matched between the brightest of both lists; they do not fit the
        transform (:class:`~.alignment.FitStars`)."""
        s = self.stars
        ok = np.flatnonzero(np.asarray(s["detected"]) & np.isfinite(s["flux_ref"]))
        ok = ok[np.argsort(-np.asarray(s["flux_ref"])[ok], kind="stable")][: 2 * n]
        iso = np.asarray(s["isolated"])[ok]
        chosen = np.concatenate([ok[iso], ok[~iso]])[:n]
        return chosen[np.argsort(-np.asarray(s["flux_ref"])[chosen], kind="stable")]

    def save(self, path: Path) -> None:
        hdr = fits.Header()
        hdr["CATFMT"] = (CATALOGUE_FORMAT, "luigi_phot catalogue format")
        hdr["CATID"] = (self.catalogue_id, "unique id of this catalogue build")
        hdr["CATKEY"] = (self.key, "configuration key the catalogue was built for")
        hdr["REFNY"], hdr["REFNX"] = self.shape
        hdr["PIXSCALE"] = (self.pixel_scale_arcsec, "reference pixel scale [arcsec/pix]")
        hdr["FILTER"] = (self.filter_name, "dataset filter")
        hdr["EXPTIME"] = (self.exptime_s, "reference exposure [s]")
        hdr["MJDMID"] = (self.mjd_mid, "reference mid-exposure MJD (UTC)")
        hdr["SKY_E"] = (self.sky_e, "reference sky [e-/pix]")
        hdr["TARGIDX"] = (self.target_index, "row of the target")
        hdr["REFDIGST"] = (self.reference_digest, "sha256 of the reference")
        hdr["ZPOFFSET"] = (self.zp_offset, "[mag] added to the default zero point")
        hdr.update(name_cards(self.reference_image, "REFIMAGE", "REFIMHEX", "reference frame"))
        for k, v in self.psf.to_header().items():
            hdr[k] = v
        for note in self.notes:
            hdr.add_history(shown_ascii(note)[:70])   # a file name in a note may be anything
        for k, v in self.facts.items():
            hdr[k] = v
        hdr.update(self.wcs_header)
        table = fits.BinTableHDU(self.stars, name="STARS")
        fits.HDUList([fits.PrimaryHDU(header=hdr), table]).writeto(path, overwrite=True)

    @classmethod
    def load(cls, path: Path) -> "Catalogue":
        with fits.open(path) as hdul:
            hdr = hdul[0].header
            stars = Table(hdul["STARS"].data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs_header = WCS(hdr, naxis=2).to_header(relax=True)
        return cls(stars=stars, reference_image=name_from_header(hdr, "REFIMAGE", "REFIMHEX"),
                   shape=(hdr["REFNY"], hdr["REFNX"]),
                   wcs_header=wcs_header, pixel_scale_arcsec=hdr["PIXSCALE"], filter_name=hdr["FILTER"],
                   psf=MoffatPSF.from_header(hdr), exptime_s=hdr["EXPTIME"], mjd_mid=hdr["MJDMID"],
                   sky_e=hdr["SKY_E"], catalogue_id=hdr["CATID"], key=hdr["CATKEY"],
                   notes=[str(h) for h in hdr.get("HISTORY", [])], reference_digest=str(hdr.get("REFDIGST", "")),
                   zp_offset=float(hdr.get("ZPOFFSET", 0.0)),
                   facts={k: (hdr[k], hdr.comments[k]) for k in hdr if k.startswith(("AST", "TGT"))})


# --------------------------------------------------------------------------
# Reference choice
# --------------------------------------------------------------------------


@dataclass
class ReferenceChoice:
    path: Path
    info: FrameInfo
    reason: str
    rejected: dict[str, str]          # frame name -> why it cannot be the reference
    filter_name: str

    def load(self, camera) -> Frame:
        """The reference frame with the WCS the choice found for it (its own, or one
        borrowed from another frame when it has none: see :func:`borrow_wcs`)."""
        frame = load_frame(self.path, camera)
        if frame.info.wcs is None:
            frame.info.wcs = self.info.wcs
        return frame


def _target_pixel(info: FrameInfo, ra: float, dec: float):
    x, y = info.wcs.all_world2pix([[ra, dec]], 0)[0]
    return float(x), float(y)


class _Look(NamedTuple):
    """What the quick look at a candidate reference saw (electrons, pixels)."""

    sky_e: float
    sky_sigma_e: float
    fwhm_pix: float          # median over its star-like peaks (NaN when fewer than 3)
    n_stars: int             # star-like peaks above 10 sigma
    bad_near_target: int     # masked or saturated pixels within 3 FWHM of the target


def _quick_look(info: FrameInfo, x: float, y: float, half: int = 512) -> _Look:
    """Sky, sky noise, FWHM, star count and the number of bad or saturated pixels near the
    target (within 3 FWHM of (x, y)), measured on a crop around (x, y), reading only that
    crop. Hot pixels, a bad column, cosmic rays and saturated stars do not count as stars
    (by their shape: frames in ADU often have no mask), so the FWHM is the stars'."""
    ny, nx = info.shape
    x0, x1 = int(max(0, x - half)), int(min(nx, x + half))
    y0, y1 = int(max(0, y - half)), int(min(ny, y + half))
    with fits.open(info.path, memmap=False) as hdul:
        hdu = hdul[info.hdu_index]
        crop = np.asarray(hdu.section[y0:y1, x0:x1], dtype=np.float32) * np.float32(info.to_electrons)
        flags = np.zeros(crop.shape, dtype=np.uint8)
        if info.bpm_hdu is not None:
            # bad columns and hot pixels would otherwise be the "brightest stars"
            bpm = np.asarray(hdul[info.bpm_hdu].section[y0:y1, x0:x1])
            if bpm.shape == crop.shape and np.issubdtype(bpm.dtype, np.integer):
                flags[bpm != 0] = 1
    flags[~np.isfinite(crop)] = 1
    if info.bpm_hdu is None:
        mask_defective_lines(crop, flags)   # a hot column would pass for a line of sharp stars
    if info.saturation_e is not None:
        flags[crop >= info.saturation_e * 0.999] |= 2
    flag_flat_maximum(crop, flags, saturated_bit=2)
    mesh = sky_mesh(crop, flags, box=min(128, min(crop.shape) // 2))
    sky, sky_sigma = float(np.median(mesh.level)), float(np.median(mesh.sigma))
    stars, fwhm = star_peaks(crop, flags, mesh, nsigma=10.0, max_stars=1500)
    reach = 3.0 * (fwhm if np.isfinite(fwhm) else 3.0)
    yy, xx = np.ogrid[y0 - y: y1 - y, x0 - x: x1 - x]
    bad_near_target = int(np.count_nonzero(flags[(xx * xx + yy * yy) <= reach * reach]))
    return _Look(sky, sky_sigma, fwhm, len(stars), bad_near_target)


def _pick_reference(looks: list) -> tuple[tuple, str]:
    """The reference among (path, info, _Look) candidates, and why, in words.

    Transparent frames only (at least half the most stars seen); among them, those with
    seeing no worse than the median candidate's (a blurred reference costs every frame
    catalogue completeness in a crowded field); among those the smallest FWHM x sky
    noise (the faint stars' signal to noise), preferring a frame clean around the target
    while it scores within 1.5x of the best."""
    most = max(lk[2].n_stars for lk in looks)
    clear = [lk for lk in looks if lk[2].n_stars >= 0.5 * most]
    median_fwhm = float(np.median([lk[2].fwhm_pix for lk in looks]))
    sharp = [lk for lk in clear if lk[2].fwhm_pix <= median_fwhm] or clear

    def score(lk):
        return lk[2].fwhm_pix * lk[2].sky_sigma_e

    # a bad column or saturated pixels beside the target on the reference would bias
    # its catalogue position, which every frame's forced aperture then inherits
    best_score = min(score(lk) for lk in sharp)
    clean = [lk for lk in sharp if lk[2].bad_near_target == 0 and score(lk) <= 1.5 * best_score]
    best = min(clean or sharp, key=score)
    scale = best[1].pixel_scale_arcsec or 1.0
    why = (f"the smallest FWHM x sky noise of the {len(sharp)} with at least half the most stars seen ({most})"
           f" and seeing no worse than the median ({median_fwhm * scale:.2f}\") of {len(looks)} candidates"
           + ("; clean around the target" if clean and len(clean) < len(sharp) else ""))
    return best, why


def choose_reference(frame_paths: list[Path], camera, ra: float, dec: float,
                     configured: str | None = None, max_candidates: int = 60,
                     filter_name: str | None = None, allow_no_wcs: bool = False) -> ReferenceChoice:
    """Pick the reference frame.

    The dataset's filter is the most common one among readable frames (or
    `filter_name`). Candidates are frames whose usable WCS puts the target at least 50
    pixels inside the frame and, when there are such frames, frames without a WCS too:
    a frame without one that wins borrows its WCS from the best frame with one through
    their star pattern (:func:`borrow_wcs`; a frame that cannot borrow one is passed
    over). Among up to `max_candidates` of them (evenly spread over the dataset), those
    showing at least half as many stars as the best (clouds show fewer) and seeing no
    worse than their median compete: the smallest FWHM x sky noise wins (see
    :func:`_pick_reference`). The reason names its FWHM, sky and why.
    With `allow_no_wcs` (an astrometric catalogue can solve the reference), frames with
    no WCS but a pixel scale are candidates when no frame has a WCS, the target taken
    near their centre."""
    infos: dict[Path, FrameInfo] = {}
    rejected: dict[str, str] = {}
    for p in frame_paths:
        try:
            infos[p] = read_frame_info(p, camera)
        except FrameError as exc:
            rejected[p.name] = exc.problem
    if not infos:
        raise CatalogueError("no readable frame in the dataset" +
                             (f" ({len(rejected)} unreadable)" if rejected else ""))
    if filter_name is None:
        names = [i.filter_name for i in infos.values()]
        values, counts = np.unique(names, return_counts=True)
        filter_name = str(values[np.argmax(counts)])
    usable, no_wcs = _candidates(infos, filter_name, ra, dec, rejected)
    if configured is not None:
        return _configured_reference(configured, frame_paths, infos, usable, rejected, filter_name, camera,
                                     ra, dec, allow_no_wcs)
    if usable:
        candidates = usable + no_wcs      # a frame without a WCS can borrow one
    elif allow_no_wcs:
        candidates = [c for c in no_wcs if c[1].pixel_scale_arcsec]
    else:
        candidates = []
    if not candidates:
        raise CatalogueError("no frame can be the reference: none has a usable WCS that puts the target "
                             f"on the frame ({len(infos)} readable frames)")
    if len(candidates) > max_candidates:
        pick = np.linspace(0, len(candidates) - 1, max_candidates).round().astype(int)
        candidates = [candidates[i] for i in np.unique(pick)]
    looks = []
    for p, info, x, y in candidates:
        try:
            look = _quick_look(info, x, y)
        except Exception as exc:  # unreadable pixels: not a candidate
            rejected.setdefault(p.name, f"pixels unreadable ({type(exc).__name__})")
            continue
        looks.append((p, info, look))
    looks = [lk for lk in looks if np.isfinite(lk[2].fwhm_pix) and lk[2].n_stars >= 5]
    while looks:
        (p, info, look), why = _pick_reference(looks)
        scale = info.pixel_scale_arcsec or 1.0
        reason = (f"automatic: FWHM {look.fwhm_pix * scale:.2f}\", sky {look.sky_e:.0f} e- (noise "
                  f"{look.sky_sigma_e:.1f} e-), {look.n_stars} stars near the target: {why}")
        donors = [lk[1] for lk in sorted(looks, key=lambda lk: lk[2].fwhm_pix * lk[2].sky_sigma_e)
                  if lk[1].wcs is not None]
        if info.wcs is not None or not donors:
            return ReferenceChoice(p, info, reason, rejected, filter_name)
        try:
            info, note = _with_borrowed_wcs(info, donors[0], camera, ra, dec)
        except CatalogueError as exc:
            rejected[p.name] = f"no WCS, and none could be borrowed: {exc}"
            looks = [lk for lk in looks if lk[0] != p]
            continue
        return ReferenceChoice(p, info, f"{reason}; {note}", rejected, filter_name)
    raise CatalogueError("no frame can be the reference: no stars found near the target on any frame")


def _candidates(infos: dict, filter_name: str, ra: float, dec: float, rejected: dict) -> tuple[list, list]:
    """The frames of the dataset's filter as (path, info, target x, target y): those whose
    WCS puts the target at least 50 px inside, and those without a WCS (the frame's
    centre standing for the target's place)."""
    usable, no_wcs = [], []
    for p, info in infos.items():
        if info.filter_name != filter_name:
            continue
        if info.wcs is None:
            no_wcs.append((p, info, (info.shape[1] - 1) / 2, (info.shape[0] - 1) / 2))
            continue
        try:
            x, y = _target_pixel(info, ra, dec)
        except Exception:
            rejected.setdefault(p.name, "WCS cannot place the target")
            continue
        ny, nx = info.shape
        if not (50 <= x < nx - 50 and 50 <= y < ny - 50):
            rejected.setdefault(p.name, "target not on the frame (by its WCS)")
            continue
        usable.append((p, info, x, y))
    return usable, no_wcs


def _configured_reference(configured, frame_paths, infos, usable, rejected, filter_name, camera, ra, dec,
                          allow_no_wcs) -> ReferenceChoice:
    """The reference named in the configuration (or kept from the previous catalogue); one
    without a WCS borrows one from a frame that has one, or is solved by the astrometry
    when `allow_no_wcs`."""
    match = [p for p in frame_paths if p.name == configured]
    if not match:
        raise CatalogueError(f"photometry.reference_image {configured!r} is not a frame of this dataset")
    p = match[0]
    if p not in infos:
        raise CatalogueError(f"photometry.reference_image {configured}: {rejected.get(p.name)}")
    info = infos[p]
    reason = "configured (photometry.reference_image)"
    if info.wcs is not None:
        return ReferenceChoice(p, info, reason, rejected, filter_name)
    failures = []
    for donor in [c[1] for c in usable][:3]:
        try:
            borrowed, note = _with_borrowed_wcs(info, donor, camera, ra, dec)
            return ReferenceChoice(p, borrowed, f"{reason}; {note}", rejected, filter_name)
        except CatalogueError as exc:
            failures.append(str(exc))
    if allow_no_wcs and info.pixel_scale_arcsec:
        return ReferenceChoice(p, info, reason, rejected, filter_name)
    raise CatalogueError(f"photometry.reference_image {configured} has no usable WCS"
                         + (f" and none could be borrowed ({'; '.join(failures)})" if failures else ""))


def _with_borrowed_wcs(info: FrameInfo, donor: FrameInfo, camera, ra: float, dec: float) -> tuple[FrameInfo, str]:
    """A copy of `info` with the WCS borrowed from `donor` (:func:`borrow_wcs`), and the
    note saying so; CatalogueError when none can be had or it leaves the target off the
    frame."""
    wcs, note = borrow_wcs(info, donor, camera)
    out = dataclasses.replace(info, wcs=wcs)
    x, y = _target_pixel(out, ra, dec)
    ny, nx = info.shape
    if not (50 <= x < nx - 50 and 50 <= y < ny - 50):
        raise CatalogueError(f"the WCS borrowed from {donor.name} puts the target off the frame")
    return out, note


def borrow_wcs(info: FrameInfo, donor: FrameInfo, camera) -> tuple[WCS, str]:
    """A WCS for the frame `info`, which has none, from the frame `donor`, which has one:
    the two frames' stars aligned by their pattern (any rotation, a meridian flip, any
    offset: :func:`~.alignment.align`) and the donor's WCS composed with that
    transformation (a TAN WCS; the donor's distortion terms, if any, are dropped). Returns
    (the WCS, a note for the log); CatalogueError when the frames do not align."""
    points = []
    for frame_info in (info, donor):
        try:
            frame = load_frame(frame_info.path, camera)
        except FrameError as exc:
            raise CatalogueError(str(exc)) from None
        flag_flat_maximum(frame.data_e, frame.pixel_flags, saturated_bit=PIXEL_SATURATED)
        mesh = sky_mesh(frame.data_e, frame.pixel_flags, box=128)
        points.append(alignment_control_points(frame.data_e, frame.pixel_flags, mesh, float(np.median(mesh.sigma))))
        del frame
    scale = (info.pixel_scale_arcsec / donor.pixel_scale_arcsec
             if info.pixel_scale_arcsec and donor.pixel_scale_arcsec else None)
    try:
        aln = align(points[0].xy, points[1].xy, frame_shape=donor.shape, expected_scale=scale,
                    fit_stars=FitStars(~points[0].saturated, ~points[1].saturated, points[1].precise))
    except AlignmentError as exc:
        raise CatalogueError(f"it does not align with {donor.name}: {exc}") from None
    wcs = compose_wcs(donor.wcs, np.vstack([aln.matrix, [0.0, 0.0, 1.0]]), info.shape)
    return wcs, (f"{info.name} has no WCS: borrowed from {donor.name} through their star pattern "
                 f"({aln.n_matched} stars, rms {aln.rms_pix:.2f} px)")


# --------------------------------------------------------------------------
# Catalogue
# --------------------------------------------------------------------------


def psf_star_candidates(stars: Table, shape, margin: float, n: int = 40) -> np.ndarray:
    """Rows of bright, unsaturated stars away from the edges, spread over the frame (the
    brightest in each cell of a 4x4 grid first): isolated ones first; stars with
    neighbours follow, for fields too crowded or too small to offer enough isolated
    stars (the PSF fit drops stars it cannot fit)."""
    x = np.asarray(stars["x_ref"])
    y = np.asarray(stars["y_ref"])
    ok = (~np.asarray(stars["saturated_ref"]) & np.asarray(stars["detected"])
          & (np.asarray(stars["snr_ref"]) > 30) & (x > margin) & (y > margin)
          & (x < shape[1] - margin) & (y < shape[0] - margin))
    isolated = np.asarray(stars["isolated"])
    out = []
    for group in (ok & isolated, ok & ~isolated):
        rows = np.flatnonzero(group)
        rows = rows[np.argsort(-np.asarray(stars["flux_ref"])[rows])]
        cell = (np.floor(4 * y[rows] / shape[0]) * 4 + np.floor(4 * x[rows] / shape[1])).astype(int)
        rank = np.zeros(rows.size, dtype=int)
        seen: dict[int, int] = {}
        for k, c in enumerate(cell):
            rank[k] = seen.get(c, 0)
            seen[c] = rank[k] + 1
        out.append(rows[np.lexsort((np.arange(rows.size), rank))])
    return np.concatenate(out)[:n]


@dataclass(frozen=True)
class CatalogueTuning:
    """The catalogue stage's fixed numbers, in one place (units in the names; FWHM is the
    reference PSF's)."""

    sky_mesh_box_pix: int = 128               # box of the background mesh
    bright_peak_sigma: float = 20.0           # the first look for the PSF: peaks this far above the sky ...
    bright_peaks_max: int = 2000              # ... at most this many
    min_bright_stars: int = 5                 # fewer refuses the reference frame
    psf_isolation_fwhm: float = 3.0           # PSF stars: no neighbour within this ...
    psf_stars_max: int = 60                   # ... and at most this many
    min_sharpness_limit: float = 0.6          # peaks sharper than a star (and than this) are not stars
    duplicate_peak_fwhm: float = 0.5          # two peaks closer than this are one star (the brighter kept)
    flux_fit_radius_fwhm: float = 1.5         # pixels each star's PSF flux is fitted on ...
    flux_fit_radius_min_pix: float = 2.5      # ... at least this far out
    model_reach_sky_sigma: float = 0.1        # a star's light is modelled out to this fraction of the sky
    model_reach_max_fwhm: float = 6.0         # noise, at most this far, in the final fluxes
    residual_reach_sky_sigma: float = 0.05    # the same for the star-subtracted image where faint
    residual_reach_max_fwhm: float = 8.0      # companions are looked for
    companion_min_distance_fwhm: float = 1.0  # a companion is this far from a known star ...
    companion_min_distance_pix: float = 2.5   # ... and this many pixels at least ...
    companion_min_height_fraction: float = 0.1  # ... and above this fraction of the light modelled there
    isolation_radius_fwhm: float = 4.0        # isolated: no neighbour within this ...
    isolation_flux_fraction: float = 0.02     # ... brighter than this fraction of the star


TUNING = CatalogueTuning()


@dataclass
class _RefImage:
    """The reference frame as the catalogue stage works on it: pixels with bad ones
    bridged, flags, background mesh and its image, and the PSF."""

    data: np.ndarray
    flags: np.ndarray
    mesh: object
    sky_level_e: float
    sky_sigma_e: float
    psf: MoffatPSF | None = None
    level: np.ndarray | None = None     # the sky image
    tuning: CatalogueTuning = TUNING

    @property
    def smooth_sigma_pix(self) -> float:
        return max(self.psf.fwhm_pix / 2.355, 0.6)

    def centroids(self, image, peaks):
        return windowed_centroids(image, peaks.x, peaks.y, self.mesh.level_at(peaks.x, peaks.y),
                                  centroid_window_sigma(self.psf.fwhm_pix, 1.0))


@dataclass
class _RefStars:
    """The catalogue's stars as they are found, one entry each in every array."""

    x: np.ndarray
    y: np.ndarray
    saturated: np.ndarray
    detected: np.ndarray
    cat_mag: np.ndarray | None = None
    is_target: np.ndarray | None = None

    def add_faint(self, x, y, saturated) -> None:
        """Stars found in the star-subtracted image: detected, no catalogue magnitude."""
        n = len(x)
        self.x, self.y = np.append(self.x, x), np.append(self.y, y)
        self.saturated = np.append(self.saturated, saturated)
        self.detected = np.append(self.detected, np.ones(n, dtype=bool))
        self.cat_mag = np.append(self.cat_mag, np.full(n, np.nan))
        self.is_target = np.append(self.is_target, np.zeros(n, dtype=bool))


@dataclass
class _CatalogueState:
    """What the steps of :func:`build_catalogue` know about the reference frame, filled in
    step by step."""

    frame: Frame
    ra: float
    dec: float
    photometry: object                  # the dataset's PhotometryConfig
    gaia_cache: Path | None
    header_scatter: object              # () -> the 1-sigma error of an unrefined header WCS [arcsec]
    tuning: CatalogueTuning
    notes: list[str] = field(default_factory=list)
    warned: list[str] = field(default_factory=list)
    ref: _RefImage | None = None
    stars: _RefStars | None = None
    height: np.ndarray | None = None    # the detections' peak heights
    astro: object = None                # astrometry.ReferenceAstrometry
    cat_mag: np.ndarray | None = None
    scale_arcsec: float = float("nan")
    facts: dict = field(default_factory=dict)
    flux: np.ndarray | None = None
    flux_err: np.ndarray | None = None
    nn_d: np.ndarray | None = None
    isolated: np.ndarray | None = None


def _prepare(s: _CatalogueState) -> None:
    s.ref = _prepare_reference(s.frame, s.tuning)


def _psf(s: _CatalogueState) -> None:
    s.ref.psf = _reference_psf(s.ref, s.frame.info, s.notes)


def _detect(s: _CatalogueState) -> None:
    s.stars, s.height = _detect_stars(s.ref, s.photometry)


def _astrometry(s: _CatalogueState) -> None:
    """The absolute astrometry: catalogue file, Gaia DR3 or the header."""
    s.astro, s.cat_mag = _reference_wcs(s.frame.info, np.column_stack([s.stars.x, s.stars.y]), s.ra, s.dec,
                                        s.photometry, s.ref.psf.fwhm_pix, s.gaia_cache, s.header_scatter,
                                        s.notes, s.warned)
    s.scale_arcsec = _wcs_scale_arcsec(s.astro.wcs) if s.astro.refined else s.frame.info.pixel_scale_arcsec


def _target(s: _CatalogueState) -> None:
    st = s.stars
    (st.x, st.y, st.saturated, st.detected, st.cat_mag, st.is_target, s.facts) = _place_target(
        s.frame.info, s.astro.wcs, s.astro, st.x, st.y, s.height, st.saturated, st.detected, s.cat_mag, s.ra,
        s.dec, s.ref.psf.fwhm_pix, s.scale_arcsec, s.photometry.target_snap_arcsec, s.notes, s.warned)


def _fluxes(s: _CatalogueState) -> None:
    s.flux, s.flux_err = _reference_fluxes(s.ref, s.stars, s.photometry, s.notes)
    if (s.ref.flags & 2).any():   # stars touching saturated pixels
        from .aperture import pixel_flag_summary
        s.stars.saturated = s.stars.saturated | ((pixel_flag_summary(
            s.ref.flags & np.uint8(2), s.stars.x, s.stars.y, s.ref.psf.fwhm_pix) & 2) != 0)


def _isolated(s: _CatalogueState) -> None:
    s.nn_d, s.isolated = _isolation(s.stars, s.flux, s.ref.psf.fwhm_pix, s.tuning)


#: The catalogue stage, in order.
CATALOGUE_STEPS = (
    Step("prepare", _prepare),
    Step("psf", _psf),
    Step("detect", _detect),
    Step("astrometry", _astrometry),
    Step("target", _target),
    Step("fluxes", _fluxes),
    Step("isolation", _isolated),
)


def build_catalogue(frame: Frame, ra: float, dec: float, photometry, key: str,
                    gaia_cache: Path | None = None, header_scatter=None,
                    tuning: CatalogueTuning = TUNING) -> Catalogue:
    """Detect, measure and place every star of the reference frame through
    :data:`CATALOGUE_STEPS`: the pixels prepared, the PSF on bright isolated stars, every
    star by a matched filter, the absolute astrometry (astrometry.py: a catalogue file,
    Gaia DR3 or the header), the target (identification.py), the reference fluxes by
    simultaneous PSF photometry (with faint companions found in the star-subtracted
    image), isolation; then the table.

    `photometry` is the dataset's PhotometryConfig; `gaia_cache` the Gaia DR3 cache file;
    `header_scatter()` the 1-sigma error of an unrefined header WCS [arcsec] (called only
    when the header is used as it is). Fluxes are total PSF fluxes in electrons on the
    reference frame. Any error but a CatalogueError carries a note naming the step."""
    s = _CatalogueState(frame, ra, dec, photometry, gaia_cache, header_scatter, tuning)
    timings = run_steps(CATALOGUE_STEPS, s, f"the catalogue on {frame.info.name}", expected=(CatalogueError,))
    info, wcs = frame.info, s.astro.wcs
    table = _catalogue_table(s.stars, wcs, s.flux, s.flux_err, s.nn_d, s.isolated)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs_header = wcs.to_header(relax=True)
    return Catalogue(stars=table, reference_image=info.name, shape=s.ref.data.shape, wcs_header=wcs_header,
                     pixel_scale_arcsec=float(s.scale_arcsec), filter_name=info.filter_name, psf=s.ref.psf,
                     exptime_s=info.exptime_s, mjd_mid=info.mjd_mid, sky_e=s.ref.sky_level_e,
                     catalogue_id=uuid.uuid4().hex[:12], key=key, notes=s.notes, warnings=s.warned,
                     facts=s.facts, timings=timings)


def _prepare_reference(frame: Frame, tuning: CatalogueTuning) -> _RefImage:
    """Saturation the header did not state flagged; bad pixels (a hot column) bridged from
    their sides in a copy: they would pull the windowed centroids of the stars beside them,
    and every frame inherits the catalogue positions (the PSF and flux fits leave them out
    anyway); the background mesh."""
    flags = frame.pixel_flags
    flag_flat_maximum(frame.data_e, flags, saturated_bit=PIXEL_SATURATED)
    data = frame.data_e.copy()
    masked = np.flatnonzero((flags & (PIXEL_BAD | PIXEL_COSMIC)).ravel())
    repair_pixels(data, masked, float(np.nanmedian(data[::16, ::16])))
    mesh = sky_mesh(data, flags, box=tuning.sky_mesh_box_pix)
    return _RefImage(data=data, flags=flags, mesh=mesh, sky_level_e=float(np.median(mesh.level)),
                     sky_sigma_e=float(np.median(mesh.sigma)), tuning=tuning)


def _reference_psf(ref: _RefImage, info: FrameInfo, notes: list[str]) -> MoffatPSF:
    """A first FWHM from the bright peaks that are not cosmic rays, then the PSF fitted on
    the isolated ones (the tuning's numbers)."""
    from scipy.spatial import cKDTree

    data, mesh, tn = ref.data, ref.mesh, ref.tuning
    bright = find_peaks(data, ref.flags, mesh, nsigma=tn.bright_peak_sigma, max_peaks=tn.bright_peaks_max)
    sharp = peak_sharpness(data, bright.x, bright.y, mesh.level_at(bright.x, bright.y))
    bright = bright.take(np.flatnonzero(not_cosmic(sharp) & ~bright.saturated))
    fwhm0 = quick_fwhm(data, bright, ref.sky_level_e)
    if not np.isfinite(fwhm0) or len(bright) < tn.min_bright_stars:
        raise CatalogueError(f"{info.name}: too few stars on the reference frame ({len(bright)} bright peaks)")
    bx, by, _ = windowed_centroids(data, bright.x, bright.y, mesh.level_at(bright.x, bright.y),
                                   centroid_window_sigma(fwhm0, 1.0))
    nn_d, _ = cKDTree(np.column_stack([bx, by])).query(np.column_stack([bx, by]), k=2)
    iso = np.flatnonzero(nn_d[:, 1] > tn.psf_isolation_fwhm * fwhm0)[:tn.psf_stars_max]
    if iso.size < tn.min_bright_stars:
        iso = np.arange(min(tn.psf_stars_max, bx.size))
    fit = fit_psf(data, bx[iso], by[iso], ref.sky_sigma_e ** 2, fwhm0, pixel_ok=ref.flags == 0)
    notes.append(f"reference PSF FWHM {fit.psf.fwhm_pix:.2f} px from {fit.n_stars} stars")
    return fit.psf


def _detect_stars(ref: _RefImage, photometry) -> tuple[_RefStars, np.ndarray]:
    """Every star by a matched filter, sharper-than-a-star peaks dropped, at most
    max_catalogue_stars (brightest first); two peaks that converged onto one star keep the
    higher. Returns the stars and their peak heights."""
    from scipy.spatial import cKDTree

    data, psf = ref.data, ref.psf
    ref.level = ref.mesh.level_image(data.shape)
    peaks = find_peaks(data, ref.flags, ref.mesh, nsigma=photometry.detection_sigma,
                       smooth_sigma_pix=ref.smooth_sigma_pix, sky_image=ref.level)
    phases = []
    for fx, fy in ((0.0, 0.0), (0.5, 0.0), (0.5, 0.5)):
        oy, ox = np.mgrid[-3:4, -3:4]
        phases.append(psf.pixel_values(ox - fx, oy - fy))
    limit = star_sharpness_limit(phases)
    sharp = peak_sharpness(data, peaks.x, peaks.y, ref.mesh.level_at(peaks.x, peaks.y))
    peaks = peaks.take(np.flatnonzero(sharp < max(limit, ref.tuning.min_sharpness_limit)))
    if len(peaks) > photometry.max_catalogue_stars:
        peaks = peaks.take(np.arange(photometry.max_catalogue_stars))
    x, y, _ = ref.centroids(data, peaks)
    drop = np.zeros(x.size, dtype=bool)
    for i, j in cKDTree(np.column_stack([x, y])).query_pairs(ref.tuning.duplicate_peak_fwhm * psf.fwhm_pix):
        drop[max(i, j)] = True  # peaks are sorted brightest first
    keep = ~drop
    stars = _RefStars(x=x[keep], y=y[keep], saturated=peaks.saturated[keep], detected=np.ones(int(keep.sum()), bool))
    return stars, peaks.height[keep]


def _reference_fluxes(ref: _RefImage, stars: _RefStars, photometry, notes: list[str]):
    """Reference fluxes by simultaneous PSF photometry, then a second look for the faint
    companions that sat in brighter stars' light (not separate peaks the first time):
    found in the image with every star subtracted, added, and all fluxes fitted again;
    the final fluxes with bright stars modelled out into their neighbours' pixels."""
    data, psf, level, tn = ref.data, ref.psf, ref.level, ref.tuning
    variance = np.maximum(data - level, 0) + ref.sky_sigma_e ** 2
    fit_radius = max(tn.flux_fit_radius_fwhm * psf.fwhm_pix, tn.flux_fit_radius_min_pix)
    ok_pix = ref.flags == 0
    flux, flux_err = fit_fluxes(data - level, variance, stars.x, stars.y, psf, fit_radius, pixel_ok=ok_pix)
    if len(stars.x) < photometry.max_catalogue_stars:
        new = _faint_companions(ref, stars, flux, photometry)
        if new is not None:
            notes.append(f"{len(new[0])} faint companions found in the star-subtracted reference")
            stars.add_faint(*new)
            flux, flux_err = fit_fluxes(data - level, variance, stars.x, stars.y, psf, fit_radius, pixel_ok=ok_pix)
    reach = stamp_radius(psf, np.nan_to_num(flux), tn.model_reach_sky_sigma * ref.sky_sigma_e,
                         tn.model_reach_max_fwhm * psf.fwhm_pix)
    flux, flux_err = fit_fluxes(data - level, variance, stars.x, stars.y, psf, fit_radius, pixel_ok=ok_pix,
                                model_radius_pix=reach)
    ref.level = None
    return flux, flux_err


def _faint_companions(ref: _RefImage, stars: _RefStars, flux, photometry):
    """(x, y, saturated) of the peaks of the star-subtracted image that are neither close
    to a known star nor small against the light modelled there (more likely that star's
    PSF misfit than a companion); None when there is none."""
    from scipy.spatial import cKDTree

    data, psf, tn = ref.data, ref.psf, ref.tuning
    reach = stamp_radius(psf, np.nan_to_num(flux), tn.residual_reach_sky_sigma * ref.sky_sigma_e,
                         tn.residual_reach_max_fwhm * psf.fwhm_pix)
    residual = data - render_stars(data.shape, stars.x, stars.y, np.nan_to_num(flux), psf, reach)
    extra = find_peaks(residual, ref.flags, ref.mesh, nsigma=photometry.detection_sigma,
                       smooth_sigma_pix=ref.smooth_sigma_pix, sky_image=ref.level)
    if not len(extra):
        return None
    ex, ey, _ = ref.centroids(residual, extra)
    d_near, _ = cKDTree(np.column_stack([stars.x, stars.y])).query(np.column_stack([ex, ey]))
    modelled = (data - residual)[extra.y, extra.x]
    far = d_near > max(tn.companion_min_distance_fwhm * psf.fwhm_pix, tn.companion_min_distance_pix)
    new = np.flatnonzero(far & (extra.height > tn.companion_min_height_fraction * modelled))
    new = new[: photometry.max_catalogue_stars - len(stars.x)]
    return (ex[new], ey[new], extra.saturated[new]) if new.size else None


def _isolation(stars: _RefStars, flux, fwhm_pix: float, tuning: CatalogueTuning):
    """(nearest-neighbour distance [pix], isolated): no neighbour brighter than the tuning's
    fraction of the star within its radius."""
    from scipy.spatial import cKDTree

    x, y = stars.x, stars.y
    t = cKDTree(np.column_stack([x, y]))
    nn_d = t.query(np.column_stack([x, y]), k=2)[0][:, 1] if x.size > 1 else np.full(x.size, np.inf)
    isolated = np.ones(x.size, dtype=bool)
    fpos = np.where(np.isfinite(flux), np.maximum(flux, 0), 0)
    for i, j in t.query_pairs(tuning.isolation_radius_fwhm * fwhm_pix):
        if fpos[j] > tuning.isolation_flux_fraction * fpos[i]:
            isolated[i] = False
        if fpos[i] > tuning.isolation_flux_fraction * fpos[j]:
            isolated[j] = False
    return nn_d, isolated


def _catalogue_table(stars: _RefStars, wcs: WCS, flux, flux_err, nn_d, isolated) -> Table:
    world = wcs.all_pix2world(np.column_stack([stars.x, stars.y]), 0)
    table = Table()
    table["id"] = np.arange(stars.x.size, dtype=np.int32)
    table["x_ref"] = stars.x.astype(np.float64)
    table["y_ref"] = stars.y.astype(np.float64)
    table["ra"] = world[:, 0]
    table["dec"] = world[:, 1]
    table["flux_ref"] = flux
    table["flux_ref_err"] = flux_err
    with np.errstate(divide="ignore", invalid="ignore"):
        table["snr_ref"] = np.where(flux_err > 0, flux / flux_err, 0.0)
    table["saturated_ref"] = stars.saturated
    table["detected"] = stars.detected
    table["is_target"] = stars.is_target
    table["nn_dist"] = nn_d
    table["isolated"] = isolated
    table["cat_mag"] = stars.cat_mag
    return table


def _wcs_scale_arcsec(wcs: WCS) -> float:
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.sqrt(np.prod(proj_plane_pixel_scales(wcs.celestial)))) * 3600.0


def _reference_wcs(info: FrameInfo, det_xy, ra, dec, photometry, fwhm_pix, gaia_cache, header_scatter,
                   notes, warned):
    """The reference WCS by the configured route (astrometry.reference_astrometry) and the
    catalogue-file magnitudes of the matched detections (for the zero point; Gaia's G is
    not the dataset's band and is used for positions only)."""
    try:
        status = int(float(info.header.get("WCSERR", 0) or 0))
    except (TypeError, ValueError):
        status = 0
    req = AstrometryRequest(
        mode=photometry.astrometry, header_wcs=info.wcs, wcs_status=status if info.wcs is not None else 0,
        scale_arcsec=info.pixel_scale_arcsec, shape=info.shape, target_ra_deg=ra, target_dec_deg=dec,
        epoch_jyear=2000.0 + (info.mjd_mid - 51544.5) / 365.25, catalogue_file=photometry.catalogue_file,
        catalogue_mag_column=photometry.catalogue_mag_column, gaia_cache=gaia_cache,
        gaia_tap_url=photometry.gaia_tap_url)
    try:
        astro, stars, more_notes, more_warnings = reference_astrometry(req, det_xy, fwhm_pix, header_scatter)
    except AstrometryError as exc:
        raise CatalogueError(f"{info.name}: {exc}") from None
    notes.extend(more_notes)
    warned.extend(more_warnings)
    cat_mag = np.full(len(det_xy), np.nan)
    if stars is not None and stars.source.startswith("catalogue file"):
        cat_mag[astro.det_rows] = stars.mag[astro.cat_rows]
        notes.append(f"magnitudes from column {stars.mag_column}" if stars.mag_column else
                     "the catalogue file has no magnitude column: default zero point")
    return astro, cat_mag


def _place_target(info, wcs, astro, x, y, height, saturated, detected, cat_mag, ra, dec, fwhm_pix, scale,
                  snap_arcsec, notes, warned):
    """The target among the detections (identification.identify_target), or added at its
    coordinates; returns the star arrays with the target and the header facts of the choice."""
    ny, nx = info.shape
    tx, ty = wcs.all_world2pix([[ra, dec]], 0)[0]
    if not (0 <= tx < nx and 0 <= ty < ny):
        raise CatalogueError(f"{info.name}: the target is not on the reference frame "
                             f"(pixel {tx:.0f}, {ty:.0f} of {nx}x{ny})")
    choice = identify_target(x, y, height, tx, ty, fwhm_pix, scale, astro.uncertainty_arcsec, snap_arcsec)
    notes.extend(choice.notes)
    warned.extend(choice.warnings)
    is_target = np.zeros(x.size, dtype=bool)
    if choice.row is not None:
        is_target[choice.row] = True
    else:
        x, y = np.append(x, tx), np.append(y, ty)
        saturated = np.append(saturated, False)
        detected = np.append(detected, False)
        cat_mag = np.append(cat_mag, np.nan)
        is_target = np.append(is_target, True)
    facts = {
        "ASTSRC": (astro.source[:40], "reference WCS source"),
        "ASTREF": (bool(astro.refined), "reference WCS refined on a catalogue"),
        "ASTNMAT": (int(astro.n_matched), "stars matched in the WCS fit"),
        "ASTRMS": (_finite_or_nan(astro.rms_arcsec), "WCS fit residual rms [arcsec]"),
        "ASTUNC": (_finite_or_nan(astro.uncertainty_arcsec), "WCS 1-sigma error used [arcsec]"),
        "TGTRA": (float(ra), "target RA as configured [deg]"),
        "TGTDEC": (float(dec), "target Dec as configured [deg]"),
        "TGTSEP": (float(np.hypot(choice.x - tx, choice.y - ty) * scale), "target - coordinates [arcsec]"),
        "TGTRAD": (float(choice.radius_pix * scale), "target match radius [arcsec]"),
        "TGTDET": (choice.row is not None, "target detected on the reference"),
        "TGTAMBIG": (bool(choice.ambiguous), "another star nearly as close"),
    }
    return x, y, saturated, detected, cat_mag, is_target, facts


def _finite_or_nan(v) -> float | str:
    return float(v) if np.isfinite(v) else "NaN"
