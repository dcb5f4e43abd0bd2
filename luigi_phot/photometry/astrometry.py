"""Absolute astrometry of the reference frame: its WCS checked and refined against an
astrometric catalogue before the target is placed.

- :func:`read_catalogue_file`: the user's catalogue (CSV/ECSV with ra, dec in degrees and
  optionally a magnitude), the offline route.
- :func:`query_gaia_dr3` / :func:`parse_gaia_votable` / :func:`gaia_stars`: Gaia DR3 over the
  reference frame's footprint by a synchronous TAP query (plain HTTP POST, VOTable answer),
  cached in an ECSV file whose meta records the query's centre and radius, so reruns, offline
  runs and other datasets of the same field reuse it. Positions are moved by their proper
  motions from Gaia's epoch (J2016.0) to the reference frame's.
- :func:`refine_wcs`: match the detected stars to the catalogue starting from a WCS (a voted
  shift absorbs a header off by arcseconds, or by arcminutes when it is only the telescope
  pointing), then fit a TAN WCS to the matched pairs with outlier rejection; its rms and
  number of matched stars say how good it is.
- :func:`solve_by_pattern`: a frame with no WCS at all, given the target's coordinates and
  the pixel scale: star patterns matched as frames are aligned (alignment.match_star_lists:
  any rotation, either parity, a few per cent of scale), then refined as above.
- :func:`header_wcs_scatter`: how much the frames' header WCSs disagree with each other
  (the positional uncertainty of an unrefined header).

Nothing here imports Luigi or reads configuration files.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

__all__ = ["AstrometryError", "GaiaUnavailable", "ReferenceStars", "AstrometricSolution", "read_catalogue_file",
           "gaia_adql", "query_gaia_dr3", "parse_gaia_votable", "gaia_stars", "refine_wcs", "solve_by_pattern",
           "header_wcs_scatter", "compose_wcs", "GAIA_COLUMNS", "GAIA_EPOCH_JYEAR", "AstrometryRequest",
           "reference_astrometry", "frame_stars_near", "header_scatter_of_frames"]

#: Columns asked of gaiadr3.gaia_source.
GAIA_COLUMNS = ("source_id", "ra", "dec", "pmra", "pmdec", "phot_g_mean_mag")
GAIA_EPOCH_JYEAR = 2016.0
#: Rows asked of the archive at most (brightest first): enough for astrometry of any frame.
GAIA_ROW_LIMIT = 20000
#: Detections (brightest first) used to fit a WCS; catalogue stars: twice as many.
MAX_FIT_STARS = 2000


class AstrometryError(Exception):
    """A catalogue cannot be read or used (one-line message)."""


class GaiaUnavailable(AstrometryError):
    """The Gaia archive could not be queried (unreachable, an error answer, unreadable answer)."""


@dataclass
class ReferenceStars:
    """An astrometric catalogue: sky positions [deg] and magnitudes (NaN when none)."""

    ra_deg: np.ndarray
    dec_deg: np.ndarray
    mag: np.ndarray
    source: str                    # 'catalogue file x.csv', 'Gaia DR3 (cache ...)'
    mag_column: str | None = None

    def __len__(self) -> int:
        return int(self.ra_deg.size)


@dataclass
class AstrometricSolution:
    """The reference frame's WCS and how far it can be trusted."""

    wcs: WCS
    source: str                    # where it came from (catalogue name, or 'header')
    refined: bool
    n_matched: int = 0
    rms_arcsec: float = float("nan")
    correction_arcsec: float = float("nan")    # how far the starting WCS was off at the frame centre
    uncertainty_arcsec: float = float("nan")   # 1-sigma position error of the WCS near the target
    det_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, int))   # matched detections
    cat_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, int))   # and their catalogue rows


# --------------------------------------------------------------------------
# Catalogues
# --------------------------------------------------------------------------


def read_catalogue_file(path: Path, mag_column: str | None) -> ReferenceStars:
    """ra, dec [deg] and a magnitude (the named column, else the first of mag, magnitude,
    phot_g_mean_mag, gmag, imag, rmag) from a CSV or ECSV file."""
    path = Path(path)
    try:
        table = Table.read(path, format="ascii.ecsv" if path.suffix.lower() == ".ecsv" else "ascii.csv")
    except Exception as exc:  # astropy raises many types on a malformed table
        raise AstrometryError(f"{path}: not a readable CSV/ECSV catalogue ({' '.join(str(exc).split())[:120]})") \
            from None
    cols = {c.lower(): c for c in table.colnames}
    ra_c = next((cols[c] for c in ("ra", "ra_deg", "raj2000", "ra_icrs") if c in cols), None)
    dec_c = next((cols[c] for c in ("dec", "dec_deg", "dej2000", "decj2000", "de_icrs") if c in cols), None)
    if ra_c is None or dec_c is None:
        raise AstrometryError(f"{path}: needs ra and dec columns in degrees (found {', '.join(table.colnames)})")
    if mag_column:
        if mag_column not in table.colnames:
            raise AstrometryError(f"{path}: no column {mag_column!r} (photometry.catalogue_mag_column)")
        mag_c = mag_column
    else:
        mag_c = next((cols[c] for c in ("mag", "magnitude", "phot_g_mean_mag", "gmag", "imag", "rmag")
                      if c in cols), None)
    ra = np.asarray(table[ra_c], float)
    dec = np.asarray(table[dec_c], float)
    mag = np.asarray(table[mag_c], float) if mag_c else np.full(ra.size, np.nan)
    ok = np.isfinite(ra) & np.isfinite(dec)
    return ReferenceStars(ra[ok], dec[ok], mag[ok], f"catalogue file {path.name}", mag_c)


def gaia_adql(ra_deg: float, dec_deg: float, radius_deg: float, row_limit: int = GAIA_ROW_LIMIT) -> str:
    """The ADQL cone query of gaiadr3.gaia_source, brightest first."""
    return (f"SELECT TOP {int(row_limit)} {', '.join(GAIA_COLUMNS)} FROM gaiadr3.gaia_source "
            f"WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra_deg:.7f}, {dec_deg:.7f}, "
            f"{radius_deg:.6f})) AND phot_g_mean_mag IS NOT NULL ORDER BY phot_g_mean_mag ASC")


def parse_gaia_votable(content: bytes, where: str = "Gaia archive") -> Table:
    """The table of a TAP VOTable answer; a QUERY_STATUS of ERROR (the archive's way of
    saying the query failed) or an unreadable answer raises GaiaUnavailable."""
    from astropy.io import votable

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            doc = votable.parse(io.BytesIO(content))
    except Exception as exc:
        raise GaiaUnavailable(f"{where}: the answer is not a VOTable ({' '.join(str(exc).split())[:100]})") \
            from None
    for res in doc.resources:
        for info in res.infos:
            if info.name == "QUERY_STATUS" and str(info.value).upper() == "ERROR":
                text = " ".join(str(info.content or "").split())[:200]
                raise GaiaUnavailable(f"{where}: the query failed ({text or 'no reason given'})")
    try:
        table = doc.get_first_table().to_table(use_names_over_ids=True)
    except Exception:
        raise GaiaUnavailable(f"{where}: the answer holds no table") from None
    missing = [c for c in ("ra", "dec", "phot_g_mean_mag") if c not in table.colnames]
    if missing:
        raise GaiaUnavailable(f"{where}: the answer lacks column(s) {', '.join(missing)}")
    return table


def query_gaia_dr3(ra_deg: float, dec_deg: float, radius_deg: float, tap_url: str,
                   timeout_s: float = 60.0) -> Table:
    """Gaia DR3 stars within radius_deg of (ra, dec): a synchronous TAP query
    (POST <tap_url>/sync, REQUEST=doQuery, LANG=ADQL, FORMAT=votable)."""
    import requests

    url = tap_url.rstrip("/") + "/sync"
    data = {"REQUEST": "doQuery", "LANG": "ADQL", "FORMAT": "votable", "PHASE": "RUN",
            "QUERY": gaia_adql(ra_deg, dec_deg, radius_deg)}
    try:
        answer = requests.post(url, data=data, timeout=timeout_s)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise GaiaUnavailable(f"Gaia archive {tap_url} unreachable ({reason})") from None
    if answer.status_code != 200:
        try:
            parse_gaia_votable(answer.content, f"Gaia archive {tap_url}")
        except GaiaUnavailable as exc:
            raise GaiaUnavailable(f"{exc} (HTTP {answer.status_code})") from None
        raise GaiaUnavailable(f"Gaia archive {tap_url}: HTTP {answer.status_code}")
    return parse_gaia_votable(answer.content, f"Gaia archive {tap_url}")


def _angular_distance_deg(ra1, dec1, ra2, dec2):
    r1, d1, r2, d2 = (np.radians(v) for v in (ra1, dec1, ra2, dec2))
    s = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(s, 0, 1))))


def _read_gaia_cache(path: Path, ra_deg: float, dec_deg: float, radius_deg: float) -> Table | None:
    """The cached query when it covers the cone asked for, else None."""
    try:
        table = Table.read(path, format="ascii.ecsv")
        m = table.meta
        centre = float(m["centre_ra_deg"]), float(m["centre_dec_deg"])
        cached_radius = float(m["radius_deg"])
    except Exception:
        return None
    gap = float(_angular_distance_deg(centre[0], centre[1], ra_deg, dec_deg))
    return table if gap + radius_deg <= cached_radius * 1.0001 else None


def _write_gaia_cache(path: Path, table: Table, meta: dict) -> None:
    """Written under a temporary name and renamed: a reader never sees half a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = table.copy(copy_data=False)
    table.meta = dict(meta)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table.write(tmp, format="ascii.ecsv", overwrite=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def gaia_stars(ra_deg: float, dec_deg: float, radius_deg: float, cache_path: Path, tap_url: str,
               epoch_jyear: float | None = None, timeout_s: float = 60.0) -> tuple[ReferenceStars, str]:
    """Gaia DR3 over a cone, from the cache when it covers the cone, else queried and cached.
    Returns the stars (moved to `epoch_jyear` by their proper motions) and a note saying
    where they came from. Raises GaiaUnavailable when neither is possible."""
    import datetime as dt

    cache_path = Path(cache_path)
    table = _read_gaia_cache(cache_path, ra_deg, dec_deg, radius_deg) if cache_path.is_file() else None
    if table is not None:
        note = f"Gaia DR3 from the cache {cache_path} ({len(table)} stars)"
    else:
        table = query_gaia_dr3(ra_deg, dec_deg, radius_deg, tap_url, timeout_s)
        meta = {"query": gaia_adql(ra_deg, dec_deg, radius_deg), "tap_url": tap_url,
                "centre_ra_deg": float(ra_deg), "centre_dec_deg": float(dec_deg), "radius_deg": float(radius_deg),
                "retrieved_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "epoch_jyear": GAIA_EPOCH_JYEAR}
        _write_gaia_cache(cache_path, table[[c for c in GAIA_COLUMNS if c in table.colnames]], meta)
        note = f"Gaia DR3 queried ({len(table)} stars within {radius_deg * 60:.1f}'), cached in {cache_path}"
    ra = np.asarray(table["ra"], float)
    dec = np.asarray(table["dec"], float)
    if epoch_jyear is not None and "pmra" in table.colnames and "pmdec" in table.colnames:
        years = epoch_jyear - GAIA_EPOCH_JYEAR
        pmra = np.nan_to_num(np.ma.filled(np.asarray(table["pmra"], float), np.nan))     # mas/yr, incl. cos(dec)
        pmdec = np.nan_to_num(np.ma.filled(np.asarray(table["pmdec"], float), np.nan))
        dec = dec + pmdec * years / 3.6e6
        ra = ra + pmra * years / 3.6e6 / np.cos(np.radians(dec))
    mag = np.ma.filled(np.asarray(table["phot_g_mean_mag"], float), np.nan)
    return ReferenceStars(ra, dec, np.asarray(mag, float), "Gaia DR3", "phot_g_mean_mag"), note


# --------------------------------------------------------------------------
# Refining a WCS
# --------------------------------------------------------------------------


def compose_wcs(wcs: WCS, pix_affine: np.ndarray, shape) -> WCS:
    """A TAN WCS equivalent to `wcs` applied after the pixel map `pix_affine` (3x3),
    fitted on a grid (SIP terms, if any, are dropped)."""
    from astropy.coordinates import SkyCoord
    from astropy.wcs.utils import fit_wcs_from_points

    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 9), np.linspace(0, ny - 1, 9))
    pix = np.column_stack([gx.ravel(), gy.ravel()])
    moved = pix @ pix_affine[:2, :2].T + pix_affine[:2, 2]
    world = wcs.all_pix2world(moved, 0)
    sc = SkyCoord(world[:, 0], world[:, 1], unit="deg")
    return fit_wcs_from_points((pix[:, 0], pix[:, 1]), sc, projection="TAN")


def _voted_offset(pred: np.ndarray, det: np.ndarray, radius_pix: float, n_use: int = 250):
    """The shift det - pred most often seen between the brightest predicted catalogue
    positions and the brightest detections (all pairs, coarse then fine bins); None when no
    shift is seen by at least 5 stars clearly above chance."""
    p = pred[:n_use]
    d = det[:n_use]
    if len(p) < 5 or len(d) < 5:
        return None
    diff = (d[None, :, :] - p[:, None, :]).reshape(-1, 2)
    diff = diff[np.all(np.abs(diff) <= radius_pix, axis=1)]
    if diff.shape[0] < 5:
        return None
    bin_pix = max(2.0, radius_pix / 150.0)
    nb = max(int(np.ceil(2 * radius_pix / bin_pix)), 1)
    h, xe, ye = np.histogram2d(diff[:, 0], diff[:, 1], bins=nb, range=[[-radius_pix, radius_pix]] * 2)
    k = np.unravel_index(np.argmax(h), h.shape)
    votes = h[k]
    chance = diff.shape[0] / h.size
    if votes < 5 or votes < chance + 5 * math.sqrt(chance + 1):
        return None
    centre = np.array([0.5 * (xe[k[0]] + xe[k[0] + 1]), 0.5 * (ye[k[1]] + ye[k[1] + 1])])
    for width in (1.5 * bin_pix, 2.0):   # re-centre on the pairs near the peak, then tighter
        near = np.all(np.abs(diff - centre) <= width, axis=1)
        if near.sum() < 3:
            break
        centre = np.median(diff[near], axis=0)
    return centre


def _fit_matched(det_xy, cat_ra, cat_dec, wcs, tol_pix: float, rounds: int = 3):
    """Match catalogue positions predicted by `wcs` to detections within tol_pix, fit a TAN
    WCS to the pairs and reject outliers; repeated `rounds` times. Returns
    (wcs, det_rows, cat_rows, residuals_pix) or None when fewer than 6 pairs."""
    from astropy.coordinates import SkyCoord
    from astropy.wcs.utils import fit_wcs_from_points
    from scipy.spatial import cKDTree

    tree = cKDTree(det_xy)
    for _ in range(rounds):
        pred = np.column_stack(wcs.all_world2pix(cat_ra, cat_dec, 0))
        d, j = tree.query(pred, distance_upper_bound=tol_pix)
        i = np.flatnonzero(np.isfinite(d))
        j = j[i]
        order = np.argsort(d[i])
        _, first = np.unique(j[order], return_index=True)   # one catalogue star per detection
        i, j = i[order[first]], j[order[first]]
        if i.size < 6:
            return None
        for _ in range(3):
            sc = SkyCoord(cat_ra[i], cat_dec[i], unit="deg")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wcs = fit_wcs_from_points((det_xy[j, 0], det_xy[j, 1]), sc, projection="TAN")
            res = np.hypot(*(np.column_stack(wcs.all_world2pix(cat_ra[i], cat_dec[i], 0)) - det_xy[j]).T)
            keep = res <= max(3.0 * 1.4826 * np.median(res), 0.3)
            if keep.all() or keep.sum() < 6:
                break
            i, j = i[keep], j[keep]
        tol_pix = max(min(tol_pix, 4.0 * float(np.sqrt(np.mean(res ** 2)))), 1.0)
    return wcs, j, i, res


def _pixel_scale_arcsec(wcs: WCS) -> float:
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.sqrt(np.prod(proj_plane_pixel_scales(wcs.celestial)))) * 3600.0


def refine_wcs(wcs: WCS, det_xy: np.ndarray, stars: ReferenceStars, shape, fwhm_pix: float,
               search_radius_arcsec: float = 60.0) -> AstrometricSolution | None:
    """Refine `wcs` against `stars`: detections `det_xy` (N,2; brightest first) are matched
    to catalogue positions after a voted shift of up to search_radius_arcsec, and a TAN WCS
    is fitted to the matched pairs. None when no consistent match is found."""
    ny, nx = shape
    scale = _pixel_scale_arcsec(wcs)
    margin = search_radius_arcsec / scale + 10
    px, py = wcs.all_world2pix(stars.ra_deg, stars.dec_deg, 0)
    on = np.flatnonzero((px > -margin) & (px < nx + margin) & (py > -margin) & (py < ny + margin))
    if on.size < 6 or len(det_xy) < 6:
        return None
    # the brightest few thousand of each fix a WCS as well as all of a bulge field would
    det_xy = np.asarray(det_xy, float)[:MAX_FIT_STARS]
    on = on[np.argsort(np.where(np.isfinite(stars.mag[on]), stars.mag[on], 99.0), kind="stable")][:2 * MAX_FIT_STARS]
    pred = np.column_stack([px[on], py[on]])
    shift = _voted_offset(pred, np.asarray(det_xy, float), search_radius_arcsec / scale)
    if shift is None:
        return None
    start = compose_wcs(wcs, np.array([[1, 0, -shift[0]], [0, 1, -shift[1]], [0, 0, 1]]), shape)
    fit = _fit_matched(np.asarray(det_xy, float), stars.ra_deg[on], stars.dec_deg[on], start,
                       tol_pix=max(1.5, 0.5 * fwhm_pix))
    if fit is None:
        return None
    new, det_rows, cat_rows, res = fit
    rms_pix = float(np.sqrt(np.mean(res ** 2)))
    if rms_pix > max(0.3 * fwhm_pix, 0.3):
        # chance pairs in a dense field fall anywhere within the tolerance (rms ~ 0.7 of it);
        # true pairs sit at the centroid error
        return None
    centre = [[(nx - 1) / 2, (ny - 1) / 2]]
    moved = np.hypot(*(new.all_world2pix(wcs.all_pix2world(centre, 0), 0) - np.asarray(centre))[0])
    return AstrometricSolution(
        wcs=new, source=stars.source, refined=True, n_matched=int(det_rows.size), rms_arcsec=rms_pix * scale,
        correction_arcsec=float(moved * scale),
        # the fitted zero point is good to rms/sqrt(n); 0.05" floor for the catalogue's own errors
        uncertainty_arcsec=float(math.hypot(2.0 * rms_pix * scale / math.sqrt(det_rows.size), 0.05)),
        det_rows=det_rows, cat_rows=on[cat_rows])


def _tangent_wcs(ra_deg: float, dec_deg: float, scale_arcsec: float, shape, parity: int,
                 rotation_deg: float = 0.0) -> WCS:
    """North up, east left (parity -1, the sky's as seen) or east right (+1), turned by
    `rotation_deg`, the given point at the frame centre."""
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra_deg, dec_deg]
    w.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    p = scale_arcsec / 3600.0
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    w.wcs.cd = np.array([[parity * p, 0.0], [0.0, p]]) @ np.array([[c, -s], [s, c]])
    return w


def solve_by_pattern(det_xy: np.ndarray, stars: ReferenceStars, ra_deg: float, dec_deg: float,
                     scale_arcsec: float, shape, fwhm_pix: float, n_control: int = 60) -> AstrometricSolution | None:
    """A WCS for a frame that has none: the catalogue around (ra, dec) is projected at the
    given pixel scale with (ra, dec) at the frame centre, and its star pattern matched to the
    detections by :func:`~.alignment.match_star_lists` (rotation, either parity, shift,
    scale within 0.8-1.25), the way frames are aligned to the reference. The target should
    be within about a third of the frame of its centre. None when no pattern matches."""
    from .alignment import match_star_lists

    det_xy = np.asarray(det_xy, float)
    ny, nx = shape
    half = 0.5 * math.hypot(nx, ny)
    guess = _tangent_wcs(ra_deg, dec_deg, scale_arcsec, shape, -1)
    px, py = guess.all_world2pix(stars.ra_deg, stars.dec_deg, 0)
    near = np.flatnonzero(np.hypot(px - (nx - 1) / 2, py - (ny - 1) / 2) <= half)
    if near.size < 8 or len(det_xy) < 8:
        return None
    near = near[np.argsort(np.where(np.isfinite(stars.mag[near]), stars.mag[near], 99.0), kind="stable")]
    # as many detections as catalogue stars fall on an area of the frame's size
    n_cat = min(near.size, 3 * n_control)
    n_det = min(len(det_xy), max(int(n_cat * nx * ny / (math.pi * half * half)), n_control))
    src = np.column_stack([px[near[:n_cat]], py[near[:n_cat]]])
    m, n_in = match_star_lists(src, det_xy[:n_det], scale_range=(0.8, 1.25), frame_shape=shape)
    if m is None or n_in < 6:
        return None
    start = compose_wcs(guess, np.linalg.inv(np.vstack([m, [0, 0, 1]])), shape)
    solution = refine_wcs(start, det_xy, stars, shape, fwhm_pix, search_radius_arcsec=3 * fwhm_pix * scale_arcsec)
    if solution is None or solution.n_matched < 8:
        return None
    solution.correction_arcsec = float("nan")
    return solution


def header_wcs_scatter(frames: list[tuple[WCS, np.ndarray]], reference: tuple[WCS, np.ndarray],
                       search_radius_arcsec: float = 30.0) -> tuple[float, list[float]]:
    """How far each frame's header WCS disagrees with the reference's: the detections of
    each frame (N,2 pixels, brightest first) mapped to the reference's pixels through both
    header WCSs are shifted from the reference's detections by the two WCSs' disagreement
    (a voted shift). Returns the 1-sigma error of one header WCS (2-D rms of the
    disagreements / sqrt 2) and the disagreements in arcsec; NaN when none was measured."""
    ref_wcs, ref_xy = reference
    scale = _pixel_scale_arcsec(ref_wcs)
    offsets = []
    for wcs, xy in frames:
        if len(xy) < 5:
            continue
        world = wcs.all_pix2world(np.asarray(xy, float), 0)
        pred = ref_wcs.all_world2pix(world, 0)
        shift = _voted_offset(pred, np.asarray(ref_xy, float), search_radius_arcsec / scale)
        if shift is not None:
            offsets.append(float(np.hypot(*shift) * scale))
    if not offsets:
        return float("nan"), []
    return float(np.sqrt(np.mean(np.square(offsets)) / 2.0)), offsets


# --------------------------------------------------------------------------
# The reference frame's astrometry, by the configured route
# --------------------------------------------------------------------------

#: How far a header WCS may be off when searched for against a catalogue [arcsec]: a
#: solved header (WCSERR 0 or absent), and a bare telescope pointing (WCSERR non-zero).
SEARCH_SOLVED_ARCSEC = 60.0
SEARCH_POINTING_ARCSEC = 600.0


@dataclass
class AstrometryRequest:
    """What the reference frame's astrometry is made from (all but the pixels)."""

    mode: str                        # auto | gaia | catalogue | header
    header_wcs: WCS | None
    wcs_status: int                  # WCSERR (0: solved or unknown)
    scale_arcsec: float | None       # pixel scale (header or camera configuration)
    shape: tuple[int, int]
    target_ra_deg: float
    target_dec_deg: float
    epoch_jyear: float
    catalogue_file: Path | None = None
    catalogue_mag_column: str | None = None
    gaia_cache: Path | None = None
    gaia_tap_url: str = ""
    gaia_timeout_s: float = 60.0


def _field_cone(req: AstrometryRequest) -> tuple[float, float, float]:
    """Centre and radius [deg] of a cone covering the frame (and the search margin)."""
    ny, nx = req.shape
    half_deg = 0.5 * math.hypot(nx, ny) * req.scale_arcsec / 3600.0
    if req.header_wcs is not None:
        ra, dec = req.header_wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
        extra = (SEARCH_POINTING_ARCSEC if req.wcs_status else SEARCH_SOLVED_ARCSEC) / 3600.0
        return float(ra), float(dec), 1.05 * half_deg + extra
    # no WCS: the target is somewhere on the frame
    return req.target_ra_deg, req.target_dec_deg, 2.05 * half_deg


def _catalogue_stars(req: AstrometryRequest, notes: list[str], warned: list[str]) -> ReferenceStars | None:
    if req.mode in ("auto", "catalogue") and req.catalogue_file is not None:
        return read_catalogue_file(req.catalogue_file, req.catalogue_mag_column)
    if req.mode not in ("auto", "gaia") or req.gaia_cache is None:
        return None
    ra, dec, radius = _field_cone(req)
    try:
        stars, note = gaia_stars(ra, dec, radius, req.gaia_cache, req.gaia_tap_url, req.epoch_jyear,
                                 req.gaia_timeout_s)
    except GaiaUnavailable as exc:
        if req.mode == "gaia":
            raise AstrometryError(f"photometry.astrometry is 'gaia' but {exc}") from None
        warned.append(f"no astrometric catalogue: {exc}")
        return None
    notes.append(note)
    return stars


def _solve(req: AstrometryRequest, stars: ReferenceStars, det_xy, fwhm_pix: float) -> AstrometricSolution | None:
    if req.header_wcs is not None:
        search = SEARCH_POINTING_ARCSEC if req.wcs_status else SEARCH_SOLVED_ARCSEC
        sol = refine_wcs(req.header_wcs, det_xy, stars, req.shape, fwhm_pix, search_radius_arcsec=search)
        if sol is not None or not req.wcs_status:
            return sol
        ny, nx = req.shape
        ra, dec = req.header_wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
        return solve_by_pattern(det_xy, stars, float(ra), float(dec), req.scale_arcsec, req.shape, fwhm_pix)
    return solve_by_pattern(det_xy, stars, req.target_ra_deg, req.target_dec_deg, req.scale_arcsec, req.shape,
                            fwhm_pix)


def _needs(req: AstrometryRequest) -> str:
    return ("give photometry.catalogue_file (CSV/ECSV with ra, dec) or let the pipeline query Gaia "
            "(photometry.astrometry: auto or gaia, with the archive reachable or its cache "
            "photometry.gaia_cache_file present)" + ("" if req.scale_arcsec else
                                                    ", and a pixel scale (camera.pixel_scale_arcsec)"))


def reference_astrometry(req: AstrometryRequest, det_xy: np.ndarray, fwhm_pix: float,
                         header_scatter=None) -> tuple[AstrometricSolution, ReferenceStars | None, list, list]:
    """The reference frame's WCS by the configured route (see the module docstring):
    returns (solution, the catalogue used or None, notes, warnings). `header_scatter()`,
    called only when the header WCS is used as it is, gives its 1-sigma error [arcsec]
    (NaN when unknown). Raises AstrometryError, in one line, when no usable WCS can be had."""
    notes: list[str] = []
    warned: list[str] = []
    name = "the reference frame"
    if req.header_wcs is None and not req.scale_arcsec:
        raise AstrometryError(f"{name} has no WCS and no pixel scale: set camera.pixel_scale_arcsec and "
                              + _needs(req))
    stars = None if req.mode == "header" else _catalogue_stars(req, notes, warned)
    sol = None
    if stars is not None and req.header_wcs is None and not np.isfinite(stars.mag).any():
        raise AstrometryError(f"{name} has no WCS, and {stars.source} has no magnitude column to match its "
                              "brightest stars to the frame's: add one (e.g. Gaia's phot_g_mean_mag)")
    if stars is not None:
        sol = _solve(req, stars, det_xy, fwhm_pix)
        if sol is not None:
            notes.append(f"reference WCS refined against {stars.source}: {sol.n_matched} stars matched, "
                         f"rms {sol.rms_arcsec:.3f}\"" + ("" if not math.isfinite(sol.correction_arcsec) else
                                                          f", header WCS was off by {sol.correction_arcsec:.2f}\"")
                         + " at the frame centre")
            return sol, stars, notes, warned
        if req.mode in ("gaia", "catalogue") or req.header_wcs is None or req.wcs_status:
            raise AstrometryError(f"{name}: its stars do not match {stars.source} ({len(stars)} stars) "
                                  + ("around the target" if req.header_wcs is None else "near the header WCS"))
        warned.append(f"the detected stars do not match {stars.source}: the header WCS is used as it is")
    if req.header_wcs is None:
        raise AstrometryError(f"{name} has no WCS and no catalogue to solve it against: " + _needs(req))
    if req.wcs_status:
        raise AstrometryError(f"{name}'s WCS is only the telescope pointing (WCSERR={req.wcs_status}), not a "
                              "solution, and no catalogue was matched: " + _needs(req))
    sigma = header_scatter() if header_scatter is not None else float("nan")
    from .identification import HEADER_WCS_ERROR_ARCSEC

    if math.isfinite(sigma):
        notes.append(f"header WCS used as it is; the frames' header WCSs disagree by {sigma * math.sqrt(2):.2f}\" "
                     f"rms: taken as {max(sigma, 0.2):.2f}\" (1 sigma) at the reference")
    else:
        notes.append(f"header WCS used as it is, its error taken as {HEADER_WCS_ERROR_ARCSEC:.2f}\" (1 sigma)")
    if req.mode == "auto" and not warned:
        warned.append("no astrometric catalogue: the header WCS is used as it is")
    unc = max(sigma, 0.2) if math.isfinite(sigma) else HEADER_WCS_ERROR_ARCSEC
    return AstrometricSolution(wcs=req.header_wcs, source="header", refined=False, uncertainty_arcsec=unc), \
        None, notes, warned


def frame_stars_near(info, ra_deg: float, dec_deg: float, half: int = 256, max_stars: int = 300) -> np.ndarray:
    """Bright stars (N,2 full-frame pixels, brightest first) on a crop of a frame around
    where its header WCS puts (ra, dec); reads only that crop."""
    from astropy.io import fits

    from .background import sky_mesh
    from .detection import find_peaks, not_cosmic, peak_sharpness

    x, y = info.wcs.all_world2pix([[ra_deg, dec_deg]], 0)[0]
    ny, nx = info.shape
    x0, x1 = int(max(0, x - half)), int(min(nx, x + half))
    y0, y1 = int(max(0, y - half)), int(min(ny, y + half))
    if x1 - x0 < 64 or y1 - y0 < 64:
        return np.zeros((0, 2))
    flags = np.zeros((y1 - y0, x1 - x0), np.uint8)
    with fits.open(info.path, memmap=False) as hdul:
        crop = np.asarray(hdul[info.hdu_index].section[y0:y1, x0:x1], dtype=np.float32)
        if info.bpm_hdu is not None:
            # bad columns would be lines of "stars" that agree with any shift along them
            bpm = np.asarray(hdul[info.bpm_hdu].section[y0:y1, x0:x1])
            if bpm.shape == crop.shape and np.issubdtype(bpm.dtype, np.integer):
                flags[bpm != 0] = 1
    flags[~np.isfinite(crop)] = 1
    mesh = sky_mesh(crop, flags, box=min(128, min(crop.shape) // 2))
    peaks = find_peaks(crop, flags, mesh, nsigma=10.0, max_peaks=max_stars)
    if len(peaks) == 0:
        return np.zeros((0, 2))
    sharp = peak_sharpness(crop, peaks.x, peaks.y, mesh.level_at(peaks.x, peaks.y))
    keep = np.flatnonzero(not_cosmic(sharp) & ~peaks.saturated)
    return np.column_stack([peaks.x[keep] + x0, peaks.y[keep] + y0]).astype(float)


def header_scatter_of_frames(reference_info, other_infos, ra_deg: float, dec_deg: float,
                             max_frames: int = 8) -> float:
    """1-sigma error of the reference's header WCS from how the header WCSs of up to
    `max_frames` other frames (evenly spread) disagree with it, measured on crops around
    the target (see header_wcs_scatter); NaN when it cannot be measured."""
    others = [i for i in other_infos if i.wcs is not None]
    if not others or reference_info.wcs is None:
        return float("nan")
    pick = np.unique(np.linspace(0, len(others) - 1, min(max_frames, len(others))).round().astype(int))
    frames = []
    for k in pick:
        try:
            frames.append((others[k].wcs, frame_stars_near(others[k], ra_deg, dec_deg)))
        except Exception:   # an unreadable frame only leaves the estimate with one frame fewer
            continue
    ref = (reference_info.wcs, frame_stars_near(reference_info, ra_deg, dec_deg))
    return header_wcs_scatter(frames, ref)[0]
