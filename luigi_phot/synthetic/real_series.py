"""A short time series from one real frame (shifts, fresh noise, an injected star with a known light curve)."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import ndimage, optimize

from .config import CONFIG_NAME, GeneratedDataset, TRUTH_NAME, _MJD_EPOCH, _MS_PER_DAY
from .fits_writing import _prepare_red_dir, _write_reduction_config
from .psf import MoffatPSF, render_moffat_stars
from .sky import paczynski_magnification


_FITS_SUFFIXES = (".fits.fz", ".fits.gz", ".fit.gz", ".fts.gz", ".fits", ".fit", ".fts", ".fz")


def _split_suffix(name: str) -> tuple[str, str]:
    for suffix in _FITS_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return name, ".fits"


def _robust_sky(data: np.ndarray) -> tuple[float, float]:
    """Sigma-clipped median and standard deviation of the pixels."""
    _, median, std = sigma_clipped_stats(data, sigma=3.0, maxiters=10)
    std = float(std)
    return float(median), std if std > 0 else 1.0


def _estimate_fwhm_pix(data: np.ndarray, sky: float, sigma: float) -> float:
    """Median intrinsic FWHM [pix] of bright, unsaturated, isolated stars.

    Each star's pixel values are fitted with a circular Gaussian sampled at pixel
    centres; the box of one pixel (variance 1/12 per axis) is then removed in
    quadrature, since the injected star is integrated over its pixels.
    """
    img = np.nan_to_num(data.astype(float) - sky)
    smooth = ndimage.gaussian_filter(img, 1.0)
    peaks = (smooth == ndimage.maximum_filter(smooth, size=9)) & (smooth > 30 * sigma)
    top = np.nanmax(data)
    ys, xs = np.nonzero(peaks)
    ok = (data[ys, xs] < 0.8 * top) & (xs >= 7) & (ys >= 7) & (xs < img.shape[1] - 7) & (ys < img.shape[0] - 7)
    ys, xs = ys[ok], xs[ok]
    yy, xx = np.mgrid[-7:8, -7:8]
    fwhm = []
    for k in np.argsort(img[ys, xs])[::-1][:60]:
        box = img[ys[k] - 7:ys[k] + 8, xs[k] - 7:xs[k] + 8]

        def residual(p, box=box):
            amp, x0, y0, s, b = p
            return (amp * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s)) + b - box).ravel()

        p, ier = optimize.leastsq(residual, [box[7, 7], 0.0, 0.0, 1.5, 0.0])
        if ier in (1, 2, 3, 4) and 0.2 < abs(p[3]) < 7 and abs(p[1]) < 2 and abs(p[2]) < 2:
            fwhm.append(2.3548 * abs(p[3]))
    if not fwhm:
        return 3.0
    observed = float(np.median(fwhm))
    return float(max(math.sqrt(max(observed ** 2 - 2.3548 ** 2 / 12.0, 0.0)), 0.5))


def _find_quiet_spot(data: np.ndarray, sky: float, sigma: float, fwhm: float, margin: int) -> tuple[float, float]:
    """The pixel nearest the centre whose surroundings (a box of about 16 FWHM, at least
    31 px: room for an aperture and its sky annulus) are flat: no star and no step
    brighter than ~4 sigma, once smoothed 3x3."""
    ny, nx = data.shape
    img = ndimage.uniform_filter(np.nan_to_num(data.astype(float) - sky), 3)
    size = max(31, int(2 * math.ceil(8 * fwhm) + 1))
    spread = ndimage.maximum_filter(img, size=size) - ndimage.minimum_filter(img, size=size)
    yy, xx = np.mgrid[0:ny, 0:nx]
    dist = np.hypot(xx - (nx - 1) / 2, yy - (ny - 1) / 2)
    inside = (xx >= margin) & (xx < nx - margin) & (yy >= margin) & (yy < ny - margin)
    quiet = inside & (spread < 4 * sigma)
    if quiet.any():
        k = np.argmin(np.where(quiet, dist, np.inf))
    else:
        k = np.argmin(np.where(inside, spread + dist * sigma / 10.0, np.inf))
    return float(k % nx), float(k // nx)


def _format_like(original: str, ms: int) -> str:
    """ISO time with as many decimals of seconds as the original DATE-OBS had."""
    m = re.search(r"T\d\d:\d\d:\d\d(?:\.(\d+))?", original or "")
    decimals = len(m.group(1)) if m and m.group(1) else 0
    t = _MJD_EPOCH + dt.timedelta(milliseconds=ms)
    if decimals == 0:
        return t.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{t.microsecond / 1e6:.{decimals}f}"[2:]
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + frac


def series_from_real_frame(real_path, red_dir, n_frames: int = 8, seed: int = 1, *,
                           wcs_path=None, target_name: str | None = None,
                           star_xy_pix: tuple[float, float] | None = None,
                           fwhm_pix: float | None = None, moffat_beta: float = 3.0,
                           baseline_flux: float | None = None, baseline_snr: float = 50.0,
                           t0_mjd: float | None = None, tE_days: float | None = None, u0: float = 0.3,
                           cadence_days: float = 1.0, max_shift_pix: int = 5,
                           noise_sigma: float | None = None, star_gain_e_per_adu: float | None = None,
                           shift_wcs: bool = True, solved_wcs_in_header: bool = False,
                           overwrite: bool = False) -> GeneratedDataset:
    """A short time series from one real frame, with one injected star of known light curve.

    Each output frame is the input image shifted by whole pixels (uniform in
    ±``max_shift_pix``; the uncovered edge is filled with the median sky),
    plus fresh Gaussian noise of ``noise_sigma`` (default: half the frame's
    robust sky sigma), plus a Moffat star (FWHM ``fwhm_pix``, default measured
    on the frame's stars) at ``star_xy_pix`` (0-based position in the input
    frame; default: the quiet spot nearest the centre) whose flux is
    ``baseline_flux * A(t)`` with A the Paczynski magnification (t0 default: the
    middle of the series, tE default: half its span).  ``baseline_flux`` is in
    the data units of the frame (total counts in the exposure); by default it
    gives S/N ~ ``baseline_snr`` in an aperture of radius FWHM.  The star has
    Poisson noise only when ``star_gain_e_per_adu`` is given.

    The header is the input header with DATE-OBS, MJD-OBS (and JD-OBS when
    present) set to each frame's start (one frame per ``cadence_days`` after the
    input's start, ±10 min, at the input's DATE-OBS precision), and with
    CRPIX1/2 moved by the shift when ``shift_wcs`` (a stale WCS stays stale).
    Nothing else is added or removed: frames without GAIN/RDNOISE stay without
    them, and other time-like keywords (UTC, LST, HA, AIRMASS, ...) keep their
    input values.  Integer images stay integer (rounded and clipped to the
    type's range); the input's own noise is common to all frames.

    RA/Dec of the injected star come from the header WCS, or from ``wcs_path``
    (a header holding the correct WCS, e.g. eyuma_thumbnail_wcs.fit) when given.
    With ``solved_wcs_in_header`` the frames carry that correct WCS instead of the
    input's (as after plate-solving them). The input files are only read.
    """
    params = dict(locals())  # the arguments, passed on unchanged
    with warnings.catch_warnings():
        # the input's own non-standard cards and deprecated keywords are its quirks, not news
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        warnings.simplefilter("ignore", FITSFixedWarning)
        return _series_from_real_frame(SimpleNamespace(**params))


@dataclass
class _Source:
    """The real frame a series is built from, and the star injected into it."""

    hdus: list               # copies of the input's HDUs
    sci_index: int           # the 2-D image among them
    header: fits.Header      # its header (with the solved WCS when asked for)
    data: np.ndarray
    sky: float               # robust sky and sigma of the input, data units
    sigma: float
    fwhm_pix: float
    psf: MoffatPSF
    star_xy_pix: tuple[float, float]
    baseline_flux: float
    noise_sigma: float       # of the fresh noise added to each frame
    ra_deg: float = np.nan
    dec_deg: float = np.nan
    wcs_source: str = ""
    pixscale_arcsec: float = np.nan


def _series_from_real_frame(p: SimpleNamespace) -> GeneratedDataset:
    real_path, red_dir = Path(p.real_path), Path(p.red_dir)
    raw = real_path.read_bytes()
    rng = np.random.default_rng(np.random.SeedSequence([p.seed, 11]))
    src = _read_source(real_path, p)
    _place_on_sky(src, real_path, p)
    exptime, starts, mid, date_orig = _series_times(src.header, p, rng)
    span = max(mid[-1] - mid[0], 1.0)
    t0 = p.t0_mjd if p.t0_mjd is not None else mid[0] + span / 2
    te = p.tE_days if p.tE_days is not None else span / 2
    amp = paczynski_magnification(mid, t0, te, p.u0)
    stem, suffix = _split_suffix(real_path.name)
    name = p.target_name or re.sub(r"[^A-Za-z0-9_.+\-]", "_", f"{stem}-INJ")
    _prepare_red_dir(red_dir, p.overwrite)
    rows, paths = [], []
    t_start = time.perf_counter()
    sx, sy = src.star_xy_pix
    for i in range(p.n_frames):
        dx, dy = (int(v) for v in rng.integers(-p.max_shift_pix, p.max_shift_pix + 1, 2))
        counts = float(src.baseline_flux * amp[i])
        out_path = red_dir / f"{stem}-{i:03d}{suffix}"
        _write_series_frame(out_path, src, p, rng, (dx, dy), counts, starts[i], date_orig)
        paths.append(out_path)
        rows.append({"image": out_path.name, "mjd_start": starts[i] / _MS_PER_DAY, "mjd_mid": mid[i],
                     "exptime_s": exptime, "shift_x_pix": dx, "shift_y_pix": dy,
                     "target_x_pix": sx + dx, "target_y_pix": sy + dy, "target_counts": counts,
                     "target_counts_per_s": counts / exptime if exptime > 0 else np.nan,
                     "target_magnification": float(amp[i]), "noise_sigma": src.noise_sigma,
                     "fwhm_pix": src.fwhm_pix, "moffat_beta": p.moffat_beta})
    truth = _series_truth(rows, src, real_path, raw, p, {"t0_mjd": float(t0), "tE_days": float(te)})
    truth_path = red_dir / TRUTH_NAME
    truth.write(truth_path, format="ascii.ecsv")
    config_path = red_dir / CONFIG_NAME
    aperture = round(max(1.5 * src.fwhm_pix * src.pixscale_arcsec, 0.1), 3)
    _write_reduction_config(config_path, name, src.ra_deg, src.dec_deg, aperture,
                            f"series from {real_path.name}; RA/Dec of the injected star from {src.wcs_source}")
    return GeneratedDataset(red_dir=red_dir, frame_paths=paths, truth_path=truth_path, stars_path=None,
                            config_path=config_path, truth=truth, stars=None,
                            elapsed_s=time.perf_counter() - t_start)


def _read_source(real_path: Path, p: SimpleNamespace) -> _Source:
    """The input's image, its sky and seeing, and the injected star's place and brightness
    (by default S/N ~ baseline_snr in an aperture of radius FWHM)."""
    with fits.open(real_path) as hdul:
        hdus = [h.copy() for h in hdul]
    sci_index = next((i for i, h in enumerate(hdus)
                      if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU)) and h.data is not None
                      and h.data.ndim == 2), None)
    if sci_index is None:
        raise ValueError(f"{real_path}: no 2-D image HDU found")
    data0 = np.asarray(hdus[sci_index].data)
    sky, sigma0 = _robust_sky(data0)
    fwhm = float(p.fwhm_pix) if p.fwhm_pix is not None else _estimate_fwhm_pix(data0, sky, sigma0)
    sigma_new = float(p.noise_sigma) if p.noise_sigma is not None else 0.5 * sigma0
    psf = MoffatPSF(fwhm, p.moffat_beta)
    margin = int(p.max_shift_pix + math.ceil(4 * fwhm) + 2)
    star_xy = p.star_xy_pix if p.star_xy_pix is not None else _find_quiet_spot(data0, sky, sigma0, fwhm, margin)
    baseline_flux = p.baseline_flux
    if baseline_flux is None:
        noise = math.sqrt(sigma0 ** 2 + sigma_new ** 2)
        baseline_flux = p.baseline_snr * noise * math.sqrt(math.pi) * fwhm / float(psf.enclosed_fraction(fwhm))
    return _Source(hdus=hdus, sci_index=sci_index, header=hdus[sci_index].header, data=data0, sky=sky,
                   sigma=sigma0, fwhm_pix=fwhm, psf=psf, star_xy_pix=tuple(float(v) for v in star_xy),
                   baseline_flux=baseline_flux, noise_sigma=sigma_new)


_WCS_KEY = re.compile(r"^(CTYPE|CRPIX|CRVAL|CDELT|CUNIT|CROTA)\d$|^(CD|PC)\d_\d$|^(A|B|AP|BP)_(\d+_\d+|ORDER)$"
                      r"|^(LONPOLE|LATPOLE|RADESYS|EQUINOX|WCSAXES)$")


def _place_on_sky(src: _Source, real_path: Path, p: SimpleNamespace) -> None:
    """RA/Dec of the injected star from the header WCS, or from wcs_path's (then also in
    the frames' headers with solved_wcs_in_header); the pixel scale."""
    if p.wcs_path is not None:
        wcs_header, src.wcs_source = fits.getheader(p.wcs_path), str(p.wcs_path)
    else:
        wcs_header, src.wcs_source = src.header, f"{real_path.name} header"
    wcs = WCS(wcs_header, naxis=2)
    src.ra_deg, src.dec_deg = (float(v) for v in wcs.all_pix2world([src.star_xy_pix], 0)[0])
    if p.solved_wcs_in_header and p.wcs_path is not None:
        src.header = src.header.copy()
        for key in [k for k in src.header.keys() if _WCS_KEY.match(k)]:
            del src.header[key]
        src.header.update(wcs.to_header(relax=True))
    src.pixscale_arcsec = float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)


def _series_times(header0: fits.Header, p: SimpleNamespace, rng):
    """Exposure time, the frames' starts (one per cadence_days after the input's, +-10 min,
    at the input's DATE-OBS precision, in ms since MJD 0), their mid-exposure MJDs and the
    input's DATE-OBS."""
    exptime = float(header0.get("EXPTIME", header0.get("EXPOSURE", 0.0)) or 0.0)
    mjd0 = header0.get("MJD-OBS")
    if mjd0 is None:
        from astropy.time import Time
        mjd0 = Time(header0["DATE-OBS"], scale="utc").mjd
    start_ms0 = int(round(float(mjd0) * _MS_PER_DAY))
    date_orig = str(header0.get("DATE-OBS", ""))
    m = re.search(r"T\d\d:\d\d:\d\d(?:\.(\d+))?", date_orig)
    decimals = min(len(m.group(1)), 3) if m and m.group(1) else 0
    quantum = 10 ** (3 - decimals)
    starts = []
    for i in range(p.n_frames):
        ms = start_ms0 + int(round(i * p.cadence_days * _MS_PER_DAY + rng.uniform(-600, 600) * 1000))
        starts.append(int(round(ms / quantum)) * quantum)
    mid = [s / _MS_PER_DAY + exptime / 2 / 86400.0 for s in starts]
    return exptime, starts, mid, date_orig


def _write_series_frame(out_path: Path, src: _Source, p: SimpleNamespace, rng, shift: tuple[int, int],
                        counts: float, start_ms: int, date_orig: str) -> None:
    """The input shifted by whole pixels (the uncovered edge at the median sky), the star,
    fresh noise; the input's header with the new times (and CRPIX moved with the data when
    shift_wcs); integer images stay integer; the other HDUs as they were."""
    data0, (ny, nx), (dx, dy) = src.data, src.data.shape, shift
    shifted = np.full((ny, nx), src.sky, dtype=float)
    shifted[max(dy, 0):ny + min(dy, 0), max(dx, 0):nx + min(dx, 0)] = \
        data0[max(-dy, 0):ny + min(-dy, 0), max(-dx, 0):nx + min(-dx, 0)]
    sx, sy = src.star_xy_pix
    sigma_new = src.noise_sigma
    star = render_moffat_stars(np.zeros((ny, nx)), sx + dx, sy + dy, counts, src.psf,
                               floor_e=1e-3 * sigma_new if sigma_new > 0 else 1e-3, min_radius_pix=4 * src.fwhm_pix)
    if p.star_gain_e_per_adu:
        star = rng.poisson(star * p.star_gain_e_per_adu) / p.star_gain_e_per_adu
    frame = shifted + star + sigma_new * rng.standard_normal((ny, nx))
    if np.issubdtype(data0.dtype, np.integer):
        info = np.iinfo(data0.dtype)
        frame = np.clip(np.rint(frame), info.min, info.max).astype(data0.dtype)
    else:
        frame = frame.astype(data0.dtype)
    header = src.header.copy()
    header["DATE-OBS"] = _format_like(date_orig, start_ms)
    header["MJD-OBS"] = start_ms / _MS_PER_DAY
    if "JD-OBS" in header:
        header["JD-OBS"] = start_ms / _MS_PER_DAY + 2400000.5
    if p.shift_wcs:
        for key, d in (("CRPIX1", dx), ("CRPIX2", dy)):
            if key in header:
                header[key] = float(header[key]) + d
    hdus = []
    for j, h in enumerate(src.hdus):
        if j == src.sci_index:
            cls = fits.PrimaryHDU if j == 0 else fits.ImageHDU
            hdus.append(cls(frame, header))
        else:
            hdus.append(h.copy())
    fits.HDUList(hdus).writeto(out_path, output_verify="ignore")  # keep the original's quirks


def _series_truth(rows: list[dict], src: _Source, real_path: Path, raw: bytes, p: SimpleNamespace,
                  event: dict) -> Table:
    truth = Table(rows=rows)
    for col, unit in (("mjd_start", u.day), ("mjd_mid", u.day), ("exptime_s", u.s), ("shift_x_pix", u.pix),
                      ("shift_y_pix", u.pix), ("target_x_pix", u.pix), ("target_y_pix", u.pix),
                      ("fwhm_pix", u.pix)):
        truth[col].unit = unit
    truth.meta.update({
        "description": f"Time series built from the real frame {real_path.name}: integer shifts, fresh "
                       "Gaussian noise, one injected Moffat star.",
        "source_file": str(real_path),
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "pixel_convention": "0-based numpy: the centre of data[iy, ix] is (x, y) = (ix, iy); "
                            "FITS/WCS pixel = numpy + 1",
        "time_convention": "UTC MJD from the input's DATE-OBS/MJD-OBS; mjd_mid = mjd_start + exptime_s/2/86400",
        "shift_convention": "output[y + shift_y, x + shift_x] = input[y, x]; uncovered pixels = median sky",
        "data_units": str(src.header.get("BUNIT", "unknown (as in the input frame)")),
        "target_counts": "total injected counts in the exposure (integral of the PSF), data units",
        "injected_star_xy_in_input_pix": list(src.star_xy_pix),
        "target_ra_deg": src.ra_deg, "target_dec_deg": src.dec_deg, "wcs_source": src.wcs_source,
        "crpix_shifted_with_data": p.shift_wcs,
        "light_curve": {"model": "baseline_flux * A(u), no blend", "baseline_flux": float(src.baseline_flux),
                        **event, "u0": float(p.u0)},
        "input_sky": src.sky, "input_sky_sigma": src.sigma, "seed": p.seed,
    })
    return truth
