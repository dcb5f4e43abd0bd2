"""Reading frames: pixels in electrons, a pixel-flag plane, and the header facts
photometry needs (time, exposure, filter, detector, site, WCS).

A frame is the HDU named SCI when there is one, else the first 2-D image; ERR
and BPM extensions are used when present; ``.fits``, ``.fits.fz`` and gzip
files are read the same way. Input files are opened read-only and never
modified.

Anything that makes a frame unusable raises :class:`FrameError` with one line
naming the file and the problem.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.stats import mad_std
from astropy.time import Time
from astropy.utils.exceptions import AstropyUserWarning, AstropyWarning
from astropy.wcs import WCS

from ..names import shown

__all__ = [
    "CameraDefaults",
    "FrameError",
    "FrameInfo",
    "Frame",
    "PIXEL_BAD",
    "PIXEL_SATURATED",
    "PIXEL_COSMIC",
    "FRAME_SUFFIXES",
    "is_frame_name",
    "list_frames",
    "read_frame_info",
    "load_frame",
    "mask_defective_lines",
    "LCO_SITES",
    "DEFAULT_GAIN_E_PER_ADU",
    "DEFAULT_READ_NOISE_E",
]

#: Bits of the per-pixel flag plane built for every frame.
PIXEL_BAD = np.uint8(1)        # BPM bad pixel, non-finite value
PIXEL_SATURATED = np.uint8(2)  # at or above the saturation level, or BPM saturated
PIXEL_COSMIC = np.uint8(4)     # cosmic-ray hit (BPM bit 8, or found by our detector)

#: Documented defaults when neither the header nor the configuration gives a value.
DEFAULT_GAIN_E_PER_ADU = 1.0
DEFAULT_READ_NOISE_E = 5.0


@dataclass(frozen=True)
class CameraDefaults:
    """Detector values used when a frame's header lacks them (header values win).
    The ``camera`` section of reduction_config.yaml is parsed into this (config.py)."""

    gain_e_per_adu: float | None = None
    read_noise_e: float | None = None
    saturation_adu: float | None = None
    #: 'auto' (BUNIT / LCO conventions), 'adu' or 'electrons'.
    units: str = "auto"
    pixel_scale_arcsec: float | None = None
    #: Filter name for frames that carry none in their header.
    filter_name: str | None = None
    #: Observatory for frames without site keywords: (latitude deg, longitude deg east, height m).
    site: tuple[float, float, float] | None = None

#: Largest image accepted (pixels): larger than any single detector read out today, and a
#: corrupt NAXISn must not make the reader allocate tens of gigabytes.
MAX_PIXELS = 2 ** 28

FRAME_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fit.fz", ".fits.gz", ".fit.gz", ".fts.gz")

#: LCO sites (latitude deg, longitude deg east, height m), for frames with SITEID only.
LCO_SITES = {
    "lsc": (-30.1673833333, -70.8047888889, 2198.0),
    "cpt": (-32.3806, 20.8101, 1807.0),
    "coj": (-31.272932, 149.070648, 1116.0),
    "elp": (30.679923, -104.015173, 2027.0),
    "ogg": (20.7069444444, -156.2575, 3055.0),
    "tfn": (28.3, -16.5097, 2330.0),
    "tlv": (30.595833, 34.763333, 875.0),
    "sqa": (34.691499, -120.042252, 328.0),
}

_NO_FILTER = {"", "open", "air", "clear", "none", "empty", "free", "dark", "blank"}


class FrameError(Exception):
    """A frame cannot be used. ``str()`` is one line: '<file>: <problem>'."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{shown(Path(path).name)}: {problem}")


def is_frame_name(name: str) -> bool:
    low = name.lower()
    return not low.startswith(".") and low.endswith(FRAME_SUFFIXES)


def list_frames(red_dir: Path) -> list[Path]:
    """Frames of a dataset: entries of red_dir (not of its subdirectories) with a FITS
    suffix that are not directories, sorted by name. Our own products live in
    subdirectories, so they are never listed. An entry that cannot be followed (a
    symbolic link loop, a broken link) or is not a regular file is listed all the
    same: reading it then rejects that frame with the reason."""
    out = []
    with os.scandir(red_dir) as it:
        for entry in it:
            if not is_frame_name(entry.name):
                continue
            try:
                if entry.is_dir():
                    continue
            except OSError:   # a symbolic link loop: a frame that will be rejected
                pass
            out.append(Path(entry.path))
    return sorted(out)


@dataclass
class FrameInfo:
    """Header facts of a frame (cheap: no pixels read)."""

    path: Path
    hdu_index: int
    shape: tuple[int, int]
    header: fits.Header
    mjd_start: float
    exptime_s: float
    mjd_mid: float
    filter_name: str
    airmass: float | None
    wcs: WCS | None
    pixel_scale_arcsec: float | None
    units: str                     # 'electrons' or 'adu' (of the file's pixel values)
    gain_e_per_adu: float
    read_noise_e: float
    saturation_e: float | None     # in electrons; None when unknown
    site: tuple[float, float, float] | None   # lat deg, lon deg east, height m
    gain_known: bool = True        # False when the documented default gain was assumed
    err_hdu: int | None = None
    bpm_hdu: int | None = None
    notes: list[str] = field(default_factory=list)   # defaults used, to be logged as warnings

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def to_electrons(self) -> float:
        """Factor from the file's pixel units to electrons."""
        return 1.0 if self.units == "electrons" else self.gain_e_per_adu


@dataclass
class Frame:
    """A frame's pixels in electrons (float32) with its pixel-flag plane (uint8 bits
    PIXEL_*), the ERR plane in electrons when the file has one, and its FrameInfo."""

    info: FrameInfo
    data_e: np.ndarray
    pixel_flags: np.ndarray
    err_e: np.ndarray | None
    pixel_digest: str = ""   # sha256 of the science pixels as read (before conversion to electrons)

    @property
    def name(self) -> str:
        return self.info.name


# --------------------------------------------------------------------------


def _open(path: Path):
    """Open read-only; turn every way a file can be broken into a FrameError."""
    try:
        st = path.stat()
    except FileNotFoundError:
        broken = os.path.islink(path)
        raise FrameError(path, "a broken symbolic link (its target does not exist)" if broken
                         else "file not found") from None
    except PermissionError:
        raise FrameError(path, "cannot be read (permission denied)") from None
    except OSError as exc:   # a symbolic link loop, a name too long, an I/O error
        what = "a symbolic link loop" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror or exc})"
        raise FrameError(path, what) from exc
    if not stat.S_ISREG(st.st_mode):
        raise FrameError(path, "not a regular file (a FIFO, socket or device named like a frame)")
    size = st.st_size
    if size == 0:
        raise FrameError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise FrameError(path, "cannot be read (permission denied)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            hdul = fits.open(path, mode="readonly", memmap=False, lazy_load_hdus=False)
    except PermissionError:
        raise FrameError(path, "cannot be read (permission denied)") from None
    except OSError as exc:
        text = str(exc)
        if "No SIMPLE card" in text:
            raise FrameError(path, "not a FITS file (it does not start with a FITS header)") from None
        if "truncated" in text.lower() or "END card" in text or "Empty or corrupt" in text:
            raise FrameError(path, "not a readable FITS file (truncated or corrupt)") from None
        raise FrameError(path, f"not a readable FITS file ({_short(text)})") from None
    except Exception as exc:  # astropy raises several types for garbage input
        raise FrameError(path, f"not a readable FITS file ({_short(str(exc))})") from None
    return hdul


def _short(text: str, n: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _image_hdu_index(path: Path, hdul) -> int:
    names = [h.name.upper() for h in hdul]
    if "SCI" in names:
        idx = names.index("SCI")
        if _is_image(hdul[idx]):
            return idx
        raise FrameError(path, "the SCI extension holds no 2-D image")
    for i, h in enumerate(hdul):
        if _is_image(h):
            return i
    if _is_gzip(path) and not gzip_intact(path):
        # astropy stops at the end of what decompresses: a cut .gz looks like a file
        # with fewer HDUs, which is not what is wrong with it
        raise FrameError(path, "not a readable FITS file (a truncated or corrupt gzip file)")
    raise FrameError(path, "no 2-D image in the file (only tables or empty HDUs)")


def gzip_intact(path: Path) -> bool:
    """True when the gzip file decompresses to its end (its stream is complete)."""
    import gzip
    import zlib

    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
        return True
    except (OSError, EOFError, zlib.error):
        return False


def _is_image(hdu) -> bool:
    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        return False
    try:
        shape = _hdu_shape(hdu)
    except Exception:
        return False
    if len(shape) == 2 and min(shape) > 1:
        return True
    # a cube with a single plane counts as an image
    return len(shape) == 3 and shape[0] == 1 and min(shape[1:]) > 1


def _hdu_shape(hdu) -> tuple[int, ...]:
    """Shape (numpy order) from the header, without reading pixels. For a compressed
    HDU astropy presents the image header (NAXISn); ZNAXISn is the fallback."""
    h = hdu.header
    n = int(h.get("NAXIS", 0) or 0)
    prefix = "NAXIS"
    if isinstance(hdu, fits.CompImageHDU) and n == 0 and "ZNAXIS" in h:
        n, prefix = int(h["ZNAXIS"]), "ZNAXIS"
    return tuple(int(h.get(f"{prefix}{i}", 0)) for i in range(n, 0, -1))


def _merged_header(hdul, idx: int) -> fits.Header:
    """The image HDU's header, completed with primary-header keys it lacks
    (LCO puts everything in SCI; other cameras in the primary)."""
    header = hdul[idx].header.copy()
    if idx != 0:
        for card in hdul[0].header.cards:
            key = card.keyword
            if key and key not in header and key not in ("COMMENT", "HISTORY", "SIMPLE", "EXTEND", "") \
                    and not key.startswith("NAXIS") and key not in ("BITPIX", "BSCALE", "BZERO"):
                try:
                    header[key] = (card.value, card.comment)
                except Exception:
                    pass
    return header


def _number(header, *keys):
    for key in keys:
        if key in header:
            value = header[key]
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                return float(value)
            if isinstance(value, str):
                try:
                    v = float(value)
                except ValueError:
                    continue
                if math.isfinite(v):
                    return v
    return None


def _angle(value) -> float | None:
    """Degrees from a number or a sexagesimal string ('+46:52:00.4')."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    m = re.match(r"^\s*([+-])?\s*(\d+)[:\s](\d+)[:\s](\d+(?:\.\d*)?)\s*$", str(value))
    if m:
        sign = -1.0 if m.group(1) == "-" else 1.0
        return sign * (int(m.group(2)) + int(m.group(3)) / 60.0 + float(m.group(4)) / 3600.0)
    try:
        v = float(value)
        return v if math.isfinite(v) else None
    except ValueError:
        return None


#: Exposure starts accepted (MJD of 1990-01-01 and 2100-01-01): outside, a clock or header is wrong.
MJD_EARLIEST, MJD_LATEST = 47892.0, 88069.0
#: Longest exposure accepted (s): beyond a day, EXPTIME is not an exposure time.
MAX_EXPTIME_S = 1e5


def _time_of(path: Path, header, exptime_s: float) -> float:
    """MJD (UTC) of the exposure start. DATE-OBS and MJD-OBS, when both are given, must
    agree within the exposure (some cameras write the middle of the exposure in one
    of them; beyond that one of them is wrong and which one cannot be told)."""
    date_obs = header.get("DATE-OBS", header.get("DATE-BEG"))
    mjd_obs = _number(header, "MJD-OBS", "MJD-BEG")
    t_date = None
    if isinstance(date_obs, str) and date_obs.strip():
        text = date_obs.strip()
        if "T" not in text:
            tod = header.get("TIME-OBS", header.get("UT", header.get("UTSTART", header.get("UT-START"))))
            if isinstance(tod, str) and re.match(r"^\d{1,2}:\d{2}:\d{2}", tod.strip()):
                text = f"{text}T{tod.strip()}"
            else:
                text = None  # a date without a time of day is not enough
        if text is not None:
            try:
                t_date = Time(text, format="isot", scale="utc").mjd
            except ValueError:
                t_date = None
    if t_date is not None and mjd_obs is not None:
        apart_s = abs(t_date - mjd_obs) * 86400.0
        if apart_s > max(exptime_s, 2.0):
            raise FrameError(path, f"DATE-OBS ({date_obs}) and MJD-OBS ({mjd_obs}) disagree by {_duration(apart_s)}, "
                                   f"more than the exposure ({exptime_s:g} s): the header time cannot be trusted")
    start = t_date if t_date is not None else mjd_obs
    if start is None:
        if date_obs is not None:
            raise FrameError(path, f"exposure start time unreadable (DATE-OBS={date_obs!r}, MJD-OBS={mjd_obs!r})")
        raise FrameError(path, "no exposure start time (no DATE-OBS or MJD-OBS keyword)")
    if not MJD_EARLIEST <= start <= MJD_LATEST:
        given = f"DATE-OBS={date_obs!r}" if t_date is not None else f"MJD-OBS={mjd_obs!r}"
        raise FrameError(path, f"exposure start ({_short(given, 60)}) is outside the years 1990 to 2100: "
                               "a wrong clock or header")
    return start


def _duration(seconds: float) -> str:
    if seconds >= 86400 * 2:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds:.0f} s"


def _exposure_time(path: Path, header) -> float:
    exptime = _number(header, "EXPTIME", "EXPOSURE", "ITIME", "EXP_TIME")
    if exptime is None:
        raise FrameError(path, "no exposure time (no EXPTIME or EXPOSURE keyword)")
    if not 0.0 < exptime <= MAX_EXPTIME_S:
        raise FrameError(path, f"exposure time EXPTIME={exptime:g} s is not usable (it must be more than 0 "
                               f"and at most {MAX_EXPTIME_S:g} s)")
    return exptime


def _filter_of(header, camera: CameraDefaults) -> str | None:
    value = header.get("FILTER")
    if isinstance(value, str) and value.strip().lower() not in _NO_FILTER:
        return value.strip()
    parts = []
    for key in ("FILTER1", "FILTER2", "FILTER3", "HIERARCH ESO INS FILT1 NAME",
                "HIERARCH ESO INS FILT2 NAME", "FILTNAME", "FILT", "INSFLNAM"):
        v = header.get(key)
        if isinstance(v, str) and v.strip().lower() not in _NO_FILTER and v.strip() not in parts:
            parts.append(v.strip())
    if parts:
        # FILTERn and ESO FILTn NAME often repeat each other; keep distinct names only.
        return "+".join(parts[:2]) if len(parts) > 1 and parts[0] != parts[1] else parts[0]
    return camera.filter_name


def _site_of(header, camera: CameraDefaults):
    pairs = [("LATITUDE", "LONGITUD", "HEIGHT"), ("SITELAT", "SITELONG", "SITEELEV"),
             ("SITELAT", "SITELONG", "SITEALT"), ("LAT-OBS", "LONG-OBS", "ALT-OBS"),
             ("OBSLAT", "OBSLONG", "OBSALT"),
             ("HIERARCH ESO TEL GEOLAT", "HIERARCH ESO TEL GEOLON", "HIERARCH ESO TEL GEOELEV")]
    for lat_key, lon_key, h_key in pairs:
        if lat_key in header and lon_key in header:
            lat = _angle(header[lat_key])
            lon = _angle(header[lon_key])
            height = _number(header, h_key, "HEIGHT", "SITEELEV", "SITEALT") or 0.0
            if lat is not None and lon is not None and _plausible_site(lat, lon, height):
                return (lat, lon, height)
    if all(k in header for k in ("OBSGEO-X", "OBSGEO-Y", "OBSGEO-Z")):
        from astropy.coordinates import EarthLocation
        import astropy.units as u
        try:
            loc = EarthLocation.from_geocentric(header["OBSGEO-X"], header["OBSGEO-Y"], header["OBSGEO-Z"], unit=u.m)
            site = (float(loc.lat.deg), float(loc.lon.deg), float(loc.height.to_value(u.m)))
            if _plausible_site(*site):
                return site
        except Exception:
            pass
    site = str(header.get("SITEID", "")).strip().lower()
    if site in LCO_SITES:
        return LCO_SITES[site]
    return camera.site


def _plausible_site(lat: float, lon: float, height_m: float) -> bool:
    """A place on the Earth's surface (a header value beyond that would make the
    barycentric correction of the whole dataset fail)."""
    return all(map(math.isfinite, (lat, lon, height_m))) and -90 <= lat <= 90 and -360 <= lon <= 360 \
        and -1000.0 <= height_m <= 10000.0


def _wcs_of(header):
    """A celestial WCS from the header, or None when absent or unusable."""
    if "CTYPE1" not in header or "CTYPE2" not in header:
        return None, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = WCS(header, naxis=2, relax=True)
        if not w.has_celestial:
            return None, None
        w = w.celestial
        with np.errstate(over="ignore", invalid="ignore"):  # an absurd CD matrix: refused just below
            scales = w.proj_plane_pixel_scales()
        scale = float(np.sqrt(abs(scales[0].to_value("deg") * scales[1].to_value("deg")))) * 3600.0
        if not (math.isfinite(scale) and 1e-3 < scale < 3600.0):
            return None, None
        # make sure it can actually transform
        w.all_pix2world([[10.0, 10.0]], 0)
        return w, scale
    except Exception:
        return None, None


def _scale_from_optics(header) -> float | None:
    """Pixel scale [arcsec/pix] from the pixel size [um, binning applied, as N.I.N.A. and
    MaxIm write XPIXSZ] and the focal length [mm], or None."""
    pixel_um = _number(header, "XPIXSZ")
    focal_mm = _number(header, "FOCALLEN")
    if pixel_um is None or focal_mm is None or pixel_um <= 0 or focal_mm <= 0:
        return None
    scale = 206.265 * pixel_um / focal_mm
    return scale if 0.01 < scale < 100.0 else None


def _unexpected(path: Path, what: str, exc: Exception) -> FrameError:
    """A FrameError for an exception astropy (or numpy) raised on a corrupt file: its
    cards are parsed lazily, so a broken header can raise on any access."""
    return FrameError(path, f"{what} unreadable (corrupt file: {_short(f'{type(exc).__name__}: {exc}', 100)})")


def read_frame_info(path: str | os.PathLike, camera: CameraDefaults | None = None, hdul=None) -> FrameInfo:
    """Header facts of a frame (no pixels read). Raises FrameError when unusable."""
    path = Path(path)
    try:
        return _read_frame_info(path, camera or CameraDefaults(), hdul)
    except (FrameError, MemoryError):
        raise
    except Exception as exc:
        raise _unexpected(path, "header", exc) from None


def _read_frame_info(path: Path, camera: CameraDefaults, hdul) -> FrameInfo:
    own = hdul is None
    if own:
        hdul = _open(path)
    try:
        idx = _image_hdu_index(path, hdul)
        header = _merged_header(hdul, idx)
        shape = _hdu_shape(hdul[idx])[-2:]
        names = [h.name.upper() for h in hdul]
        err_hdu = names.index("ERR") if "ERR" in names else None
        bpm_hdu = None
        for cand in ("BPM", "MASK", "DQ"):
            if cand in names:
                bpm_hdu = names.index(cand)
                break
    finally:
        if own:
            hdul.close()
    notes: list[str] = []
    exptime = _exposure_time(path, header)
    mjd_start = _time_of(path, header, exptime)
    filter_name = _filter_of(header, camera)
    if filter_name is None:
        raise FrameError(path, "no filter (no FILTER keyword; set camera.filter_name to assume one)")
    airmass = _number(header, "AIRMASS", "SECZ")
    wcs, wcs_scale = _wcs_of(header)
    pixel_scale = wcs_scale or _number(header, "PIXSCALE", "SECPIX", "PIXSCAL1", "HIERARCH ESO INS PIXSCALE") \
        or _scale_from_optics(header) or camera.pixel_scale_arcsec

    units = _pixel_units(header, camera)
    # EGAIN first: amateur-camera software (N.I.N.A., SharpCap, MaxIm) writes the e-/ADU as
    # EGAIN and the driver's gain *setting* (e.g. 56 on a QHY600) as GAIN
    gain = _number(header, "EGAIN", "GAIN", "CCDGAIN", "HIERARCH ESO DET OUT1 GAIN")
    gain_known = True
    if gain is None or gain <= 0:
        gain = camera.gain_e_per_adu
        if gain is None:
            gain = DEFAULT_GAIN_E_PER_ADU
            gain_known = units == "electrons"
            if units == "adu":
                notes.append(f"no GAIN in header or configuration: assumed {gain} e-/ADU")
    rdnoise = _number(header, "RDNOISE", "READNOIS", "RON", "RDNOISE1", "HIERARCH ESO DET OUT1 RON")
    if rdnoise is None or rdnoise < 0:
        rdnoise = camera.read_noise_e
        if rdnoise is None:
            rdnoise = DEFAULT_READ_NOISE_E
            notes.append(f"no RDNOISE in header or configuration: assumed {rdnoise} e-")
    to_e = 1.0 if units == "electrons" else gain
    saturation_e = _saturation_e(header, camera, gain, to_e, notes)
    site = _site_of(header, camera)
    return FrameInfo(
        path=path, hdu_index=idx, shape=(int(shape[0]), int(shape[1])), header=header,
        mjd_start=mjd_start, exptime_s=exptime, mjd_mid=mjd_start + exptime / 2.0 / 86400.0,
        filter_name=filter_name, airmass=airmass, wcs=wcs, pixel_scale_arcsec=pixel_scale,
        units=units, gain_e_per_adu=gain, read_noise_e=rdnoise, saturation_e=saturation_e,
        site=site, gain_known=gain_known, err_hdu=err_hdu, bpm_hdu=bpm_hdu, notes=notes,
    )


def _pixel_units(header, camera: CameraDefaults) -> str:
    """'electrons' or 'adu': as configured, else from BUNIT, else electrons for LCO BANZAI
    reduced frames (RLEVEL >= 90), else ADU."""
    if camera.units != "auto":
        return camera.units
    bunit = str(header.get("BUNIT", "")).strip().lower()
    if bunit.startswith("electron") or bunit in ("e", "e-", "e-/pix"):
        return "electrons"
    if bunit in ("adu", "adus", "count", "counts", "dn"):
        return "adu"
    rlevel = _number(header, "RLEVEL")
    return "electrons" if rlevel is not None and rlevel >= 90 else "adu"


def _saturation_e(header, camera: CameraDefaults, gain: float, to_e: float, notes: list[str]) -> float | None:
    """The saturation level [e-]: SATURATE (in the pixels' units), else the configuration's
    (ADU), else the digitiser's largest value for integer pixels, else None (saturation
    only from the bad-pixel mask); the last two say so in `notes`."""
    sat = _number(header, "SATURATE", "SATLEVEL", "SATURATION")
    if sat is not None and sat > 0:
        return sat * to_e
    if camera.saturation_adu is not None:
        return camera.saturation_adu * gain
    bitpix = header.get("BITPIX")
    if isinstance(bitpix, int) and not isinstance(bitpix, bool) and bitpix in (8, 16, 32):
        # integer pixels: the digitiser's largest value is saturated
        top = 255 if bitpix == 8 else 2 ** (bitpix - 1) - 1
        top_value = top * float(_number(header, "BSCALE") or 1.0) + float(_number(header, "BZERO") or 0.0)
        notes.append(f"no SATURATE in header or configuration: pixels at the digitiser maximum "
                     f"({top_value:g}) are taken as saturated")
        return top_value * to_e
    notes.append("no SATURATE in header or configuration: saturation only from the bad-pixel mask")
    return None


def _read_plane(path: Path, hdu, what: str) -> np.ndarray:
    shape = _hdu_shape(hdu) if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) else ()
    n_pixels = math.prod(shape) if shape else 0
    if n_pixels > MAX_PIXELS:
        raise FrameError(path, f"{what} header declares {'x'.join(map(str, shape[::-1]))} pixels, "
                               f"more than the {MAX_PIXELS} this reader accepts (corrupt header?)")
    if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and not isinstance(hdu, fits.CompImageHDU) \
            and n_pixels and not _is_gzip(path):
        # a header that promises more pixels than the file holds: say so before reading
        try:
            need = int(hdu.fileinfo()["datLoc"]) + n_pixels * abs(int(hdu.header.get("BITPIX", 8))) // 8
            have = path.stat().st_size
        except Exception:
            need = have = 0
        if need > have:
            raise FrameError(path, f"{what} pixels unreadable: the file is truncated ({have} bytes, "
                                   f"its header needs {need})")
    try:
        # an absurd BSCALE overflows the scaling: those pixels are not finite, and masked below
        with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
            warnings.simplefilter("error", AstropyUserWarning)
            data = hdu.data
        if data is not None:
            data = np.asarray(data)
            if data.dtype.kind not in "biuf":
                raise TypeError(f"pixel type {data.dtype} is not a number")
    except MemoryError:
        raise
    except Exception as exc:  # decompression and reshaping of corrupt files raise many types
        raise FrameError(path, f"{what} pixels unreadable (truncated or corrupt file: "
                               f"{_short(f'{type(exc).__name__}: {exc}', 80)})") from None
    if data is None:
        raise FrameError(path, f"{what} holds no pixels")
    if data.ndim == 3:
        data = data[0]
    return data


def _is_gzip(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def _useful_err_plane(path: Path, hdul, info: FrameInfo, data: np.ndarray, flags: np.ndarray):
    """The ERR plane in electrons when it adds to the CCD model, else None.

    A sample of it is compared with the CCD model of the background (sky electrons plus
    read noise squared). Where they agree (BANZAI's ERR is that model, from the data)
    the CCD equation gives the same errors and the plane is not read; where ERR is
    larger (it carries more, e.g. flat-field noise) it is read and used; where it is
    inconsistent (smaller, or another unit) it is ignored, with a note."""
    if info.err_hdu is None:
        return None
    hdu = hdul[info.err_hdu]
    if _hdu_shape(hdu)[-2:] != data.shape:
        info.notes.append(f"ERR extension ignored (shape {_hdu_shape(hdu)} differs from the image)")
        return None
    # a band of rows across the middle: one contiguous read (compressed: its tiles only)
    ny = data.shape[0]
    rows = slice(max(0, ny // 2 - max(16, 250_000 // data.shape[1] // 2)), min(ny, ny // 2 + max(16, 250_000 // data.shape[1] // 2)))
    # a corrupt plane may hold signalling NaNs, which raise 'invalid' when widened; they
    # are non-finite like any NaN and left out below
    with np.errstate(invalid="ignore"):
        try:
            sample = np.asarray(hdu.section[rows, :], dtype=np.float64) * info.to_electrons
        except Exception:
            sample = _read_plane(path, hdu, "ERR")[rows].astype(np.float64) * info.to_electrons
    ok = (flags[rows] == 0) & np.isfinite(sample)
    if ok.sum() < 100:
        return None
    sky = float(np.median(data[rows][ok]))
    v_err = float(np.median(sample[ok] ** 2))
    v_model = max(sky, 0.0) + info.read_noise_e ** 2
    ratio = v_err / v_model if v_model > 0 else np.inf
    if 0.8 <= ratio <= 1.25:
        return None  # the same as the CCD model: not worth reading
    if 1.25 < ratio <= 3.0:
        err = np.array(_read_plane(path, hdu, "ERR"), dtype=np.float32, copy=True)
        if info.to_electrons != 1.0:
            err *= np.float32(info.to_electrons)
        info.notes.append(f"ERR plane used: its background variance is {ratio:.2f} x sky + read noise")
        return err
    info.notes.append(f"ERR plane ignored: its background variance is {ratio:.3g} x sky + read noise")
    return None


def _set_flag(flags: np.ndarray, where: np.ndarray, bit: np.uint8) -> None:
    """flags |= bit where `where` (a boolean image), without a boolean-index pass."""
    np.bitwise_or(flags, where.view(np.uint8) * np.uint8(bit), out=flags)


def _line_outliers(level: np.ndarray, nsigma: float = 8.0, window: int = 9) -> np.ndarray:
    """Indices of entries of `level` (the median of each column, or row) far from the
    median of their neighbours: lines brighter or darker than the sky and stars around
    them can make them."""
    if level.size < 3 * window:
        return np.zeros(0, dtype=int)
    padded = np.pad(level, window // 2, mode="edge")
    local = np.median(np.lib.stride_tricks.sliding_window_view(padded, window), axis=1)
    resid = level - local
    ok = np.isfinite(resid)
    if ok.sum() < 3 * window:
        return np.zeros(0, dtype=int)
    spread = mad_std(resid[ok])
    if not spread > 0:
        return np.zeros(0, dtype=int)
    return np.flatnonzero(ok & (np.abs(resid) > nsigma * spread))


def mask_defective_lines(data: np.ndarray, flags: np.ndarray) -> str | None:
    """For a frame without a bad-pixel mask: flag (PIXEL_BAD) whole columns and rows
    whose median level stands out from their neighbours' (a hot or dead column), and
    return a note saying which (None when there is none). Unflagged, a hot column is
    detected as a line of sharp "stars": they crowd the real ones out of the alignment
    and make the frame look sharper than it is. Looks at about 512 rows (columns) of
    the frame; gives up when more than 2% of the lines stand out (structure of the
    field, not defects)."""
    ny, nx = data.shape
    found = []
    for axis, n, what in ((0, nx, "column"), (1, ny, "row")):
        step = max(1, (ny if axis == 0 else nx) // 512)
        sample = data[::step] if axis == 0 else data[:, ::step]
        usable = flags[::step] == 0 if axis == 0 else flags[:, ::step] == 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # a line with no usable pixel
            level = np.nanmedian(np.where(usable, sample, np.nan), axis=axis)
        lines = _line_outliers(level)
        if lines.size == 0 or lines.size > 0.02 * n:
            continue
        if axis == 0:
            flags[:, lines] |= PIXEL_BAD
        else:
            flags[lines, :] |= PIXEL_BAD
        where = ", ".join(str(int(v)) for v in lines[:5]) + (", ..." if lines.size > 5 else "")
        found.append(f"{what}{'s' if lines.size > 1 else ''} {'x' if axis == 0 else 'y'} = {where}")
    if not found:
        return None
    return ("no bad-pixel mask: " + " and ".join(found) + " masked as bad (their level stands out from the "
            "neighbouring lines)")


def load_frame(path: str | os.PathLike, camera: CameraDefaults | None = None) -> Frame:
    """Read a frame: SCI (or first image) in electrons as float32, the pixel-flag plane
    from BPM, non-finite values and saturation, and ERR in electrons when present and
    the same shape. Raises FrameError when the frame cannot be used."""
    path = Path(path)
    try:
        return _load_frame(path, camera or CameraDefaults())
    except (FrameError, MemoryError):
        raise
    except Exception as exc:
        raise _unexpected(path, "frame", exc) from None


def _load_frame(path: Path, camera: CameraDefaults) -> Frame:
    hdul = _open(path)
    try:
        info = read_frame_info(path, camera, hdul=hdul)
        raw = _read_plane(path, hdul[info.hdu_index], "image")
        if raw.shape != info.shape:
            raise FrameError(path, f"image shape {raw.shape} does not match its header {info.shape}")
        data = np.array(raw, dtype=np.float32, copy=True, order="C")
        del raw
        # what the pixels are, whatever the file's format: a frame and its fpack'ed or
        # funpack'ed copy have other bytes but the same pixels
        pixel_digest = hashlib.sha256(memoryview(data).cast("B")).hexdigest()[:32]
        if info.to_electrons != 1.0:
            data *= np.float32(info.to_electrons)
        flags = np.zeros(data.shape, dtype=np.uint8)
        # a sum that is finite means every pixel is (one pass instead of a mask); +inf and
        # -inf pixels together sum to NaN, which is what it should say
        with np.errstate(invalid="ignore"):
            all_finite = np.isfinite(np.sum(data, dtype=np.float64))
        if not all_finite:
            _set_flag(flags, ~np.isfinite(data), PIXEL_BAD)
        if info.bpm_hdu is not None:
            bpm = _read_plane(path, hdul[info.bpm_hdu], "BPM")
            if bpm.shape == data.shape and np.issubdtype(bpm.dtype, np.integer):
                # BANZAI bits: 1 bad, 2 saturated, 4 low flat signal, 8 cosmic ray
                _set_flag(flags, (bpm & ~np.asarray(2 | 8, dtype=bpm.dtype)) != 0, PIXEL_BAD)
                _set_flag(flags, (bpm & 2) != 0, PIXEL_SATURATED)
                _set_flag(flags, (bpm & 8) != 0, PIXEL_COSMIC)
            else:
                info.notes.append(f"BPM extension ignored (shape {bpm.shape} or type {bpm.dtype} unsuitable)")
        if info.bpm_hdu is None:
            note = mask_defective_lines(data, flags)
            if note:
                info.notes.append(note)
        if info.saturation_e is not None:
            with np.errstate(invalid="ignore"):
                _set_flag(flags, data >= np.float32(info.saturation_e * 0.999), PIXEL_SATURATED)
        err = _useful_err_plane(path, hdul, info, data, flags)
    finally:
        hdul.close()

    good = flags == 0
    n_good = int(np.count_nonzero(good))
    if n_good < 0.2 * data.size:
        raise FrameError(path, f"only {100.0 * n_good / data.size:.1f}% of pixels are usable (all NaN or masked)")
    step = max(1, data.size // 200000)   # a strided sample, not a copy of every good pixel
    sample = data.ravel()[::step][good.ravel()[::step]]
    if sample.size == 0:
        sample = data[good]
    if np.ptp(sample) == 0:
        raise FrameError(path, f"image is constant (every usable pixel = {sample[0]:g})")
    return Frame(info=info, data_e=data, pixel_flags=flags, err_e=err, pixel_digest=pixel_digest)
