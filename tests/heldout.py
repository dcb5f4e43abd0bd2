"""A held-out data generator, written apart from ``luigi_phot.synthetic`` on purpose.

The project's own generator shares its authors' assumptions with the pipeline
(a Moffat PSF, LCO headers, a WCS a little off). This one is deliberately
different, so that a test reducing its frames is a test on data the pipeline
was not built around:

- the PSF is a pixel-integrated double Gaussian (core plus a 15% halo twice as
  wide), slightly elliptical: not a Moffat;
- plain single-HDU FITS, no BPM and no ERR plane; electrons (``BUNIT``) or
  16-bit ADU with a pedestal and the camera conventions of amateur/QHY
  software (``EGAIN`` is e-/ADU while ``GAIN`` is the driver's gain *setting*,
  ``XPIXSZ``/``FOCALLEN``, ``SITELAT``/``SITELONG``);
- every frame's header WCS is off by up to ``wcs_offset_arcsec`` in a random
  direction and rotated by up to ``wcs_rotation_error_deg``; some frames carry
  no WCS at all; some are turned by 180 degrees (a meridian flip);
- the configured target coordinates are ``coord_offset_arcsec`` away from the
  star;
- unflagged hot pixels and cosmic rays.

``make_heldout_dataset(red_dir, case)`` writes the frames, a
``reduction_config.yaml`` and ``heldout_truth.ecsv`` (one row per frame:
``image``, ``mjd_mid``, ``fwhm_arcsec``, ``target_counts_per_s`` (electrons per
second above the atmosphere), ``x_target_pix``, ``y_target_pix``, ``has_wcs``,
``flipped``, ``target_noise_e`` (the photon and read noise that landed in the configured
aperture at the target's true position, before hot pixels and cosmic rays) and
``target_noise_expected_e`` (its expected standard deviation)). Pixel coordinates are
0-based numpy coordinates. Their ratio is the realisation's own luck: over 16 frames its
standard deviation is 1 +- 0.18, and a light curve's std(res/err) follows it.
``noise_seed`` gives the same frames with fresh noise (a Monte Carlo).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS
from scipy.special import erf

__all__ = ["HeldOutCase", "make_heldout_dataset", "TRUTH_NAME"]

TRUTH_NAME = "heldout_truth.ecsv"
_ZERO_POINT_MAG = 25.0  # mag = 25 - 2.5 log10(e-/s)


@dataclass(frozen=True)
class HeldOutCase:
    name: str
    seed: int = 1
    shape: tuple[int, int] = (600, 600)          # (ny, nx)
    pixel_scale_arcsec: float = 0.389
    n_frames: int = 16
    n_stars: int = 900
    seeing_arcsec: tuple[float, float] = (1.2, 2.6)
    exptime_s: float = 60.0
    units: str = "electrons"                     # "electrons" (float32, BUNIT) or "adu" (uint16, EGAIN)
    gain_e_per_adu: float = 1.3
    read_noise_e: float = 6.0
    sky_e_per_s_per_pix: float = 8.0
    wcs_offset_arcsec: float = 2.0               # header WCS error, up to this, random direction per frame
    wcs_rotation_error_deg: float = 0.05
    coord_offset_arcsec: float = 1.5             # configured target coordinates are this far from the star
    no_wcs_every: int = 0                        # every k-th frame carries no WCS (0: none)
    flip_every: int = 0                          # every k-th frame is turned by 180 degrees (0: none)
    jitter_pix: float = 12.0
    target_mag: float = 16.8
    event_amplification: float = 3.0             # peak flux / baseline flux
    neighbour: tuple[float, float] | None = None  # (separation arcsec, mag difference) of a star beside the target
    n_hot_pixels: int = 40
    n_cosmic_rays: int = 25
    aperture_arcsec: float | None = None         # default: 1.2 x the median seeing
    extra_config: dict = dataclasses.field(default_factory=dict)
    #: photon and read noise from their own stream seeded by this (None: the case's stream):
    #: the same frames (field, seeing, pointing, defects) with a fresh noise realisation
    noise_seed: int | None = None


def _tan_wcs(ra_deg: float, dec_deg: float, crpix_xy, scale_arcsec: float, rotation_deg: float) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra_deg, dec_deg]
    w.wcs.crpix = [crpix_xy[0] + 1.0, crpix_xy[1] + 1.0]
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    d = scale_arcsec / 3600.0
    # east to the left (RA increases towards -x) at rotation 0
    w.wcs.cd = np.array([[-d * c, d * s], [d * s, d * c]])
    return w


def _integrated_gaussian(dx, dy, sigma_x, sigma_y):
    """Pixel-integrated 2-D Gaussian of unit flux at pixel offsets (dx, dy)."""
    ex = 0.5 * (erf((dx + 0.5) / (math.sqrt(2) * sigma_x)) - erf((dx - 0.5) / (math.sqrt(2) * sigma_x)))
    ey = 0.5 * (erf((dy + 0.5) / (math.sqrt(2) * sigma_y)) - erf((dy - 0.5) / (math.sqrt(2) * sigma_y)))
    return ex * ey


def _render(shape, x, y, counts, fwhm_pix: float, axis_ratio: float) -> np.ndarray:
    """Double-Gaussian stars (core + 15% halo at twice the width) added onto a zero image."""
    image = np.zeros(shape, dtype=np.float64)
    sigma = fwhm_pix / 2.355
    core = (sigma, sigma * axis_ratio)
    halo = (2.0 * sigma, 2.0 * sigma * axis_ratio)
    half = int(math.ceil(5.0 * halo[0])) + 1
    ny, nx = shape
    for xi, yi, ci in zip(x, y, counts):
        ix, iy = int(round(xi)), int(round(yi))
        x0, x1, y0, y1 = max(ix - half, 0), min(ix + half + 1, nx), max(iy - half, 0), min(iy + half + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        gy, gx = np.mgrid[y0:y1, x0:x1]
        dx, dy = gx - xi, gy - yi
        stamp = 0.85 * _integrated_gaussian(dx, dy, *core) + 0.15 * _integrated_gaussian(dx, dy, *halo)
        image[y0:y1, x0:x1] += ci * stamp
    return image


def _star_field(case: HeldOutCase, rng, ra0: float, dec0: float):
    """Sky positions (deg) and magnitudes of the field's stars; row 0 is the target."""
    ny, nx = case.shape
    half_deg = 0.5 * 1.25 * max(nx, ny) * case.pixel_scale_arcsec / 3600.0
    n = case.n_stars
    dec = dec0 + rng.uniform(-half_deg, half_deg, n)
    ra = ra0 + rng.uniform(-half_deg, half_deg, n) / math.cos(math.radians(dec0))
    # a power law: many faint stars, few bright ones
    mag = 21.5 - 2.5 * np.log10(1.0 + 400.0 * rng.power(0.35, n))
    ra[0], dec[0], mag[0] = ra0, dec0, case.target_mag
    # keep other stars off the target's core (a star within 1.5" would be a blend,
    # and the truth would no longer be one star's light)
    sep = np.hypot((ra - ra0) * math.cos(math.radians(dec0)), dec - dec0) * 3600.0
    far = sep > 4.0 * max(case.seeing_arcsec)
    far[0] = True
    ra, dec, mag = ra[far], dec[far], mag[far]
    if case.neighbour is not None:
        sep_arcsec, dmag = case.neighbour
        ra = np.append(ra, ra0 + sep_arcsec / 3600.0 / math.cos(math.radians(dec0)) * 0.6)
        dec = np.append(dec, dec0 + sep_arcsec / 3600.0 * 0.8)
        mag = np.append(mag, case.target_mag + dmag)
    return ra, dec, mag


def _header(case: HeldOutCase, mjd_start: float, wcs: WCS | None, flipped: bool) -> fits.Header:
    h = fits.Header()
    h["DATE-OBS"] = Time(mjd_start, format="mjd", scale="utc").isot
    h["EXPTIME"] = case.exptime_s
    h["FILTER"] = "rp"
    h["OBJECT"] = "HELDOUT"
    h["SITELAT"] = "-30 10 02.0"
    h["SITELONG"] = "-70 48 17.0"
    h["SITEELEV"] = 2200.0
    h["PIERSIDE"] = "WEST" if flipped else "EAST"
    if case.units == "adu":
        h["INSTRUME"] = "QHY600M"
        h["EGAIN"] = (case.gain_e_per_adu, "electrons per ADU")
        h["GAIN"] = (56, "camera gain setting")
        h["OFFSET"] = (30, "camera offset setting")
        h["XPIXSZ"] = 3.76
        h["YPIXSZ"] = 3.76
        h["FOCALLEN"] = round(206.265 * 3.76 / case.pixel_scale_arcsec, 1)
    else:
        h["INSTRUME"] = "HELDOUT-CCD"
        h["BUNIT"] = "electron"
        h["GAIN"] = 1.0
        h["RDNOISE"] = case.read_noise_e
    if wcs is not None:
        h.update(wcs.to_header())
    return h


def _frame_plan(case: HeldOutCase, rng, k: int):
    seeing = rng.uniform(*case.seeing_arcsec)
    flipped = case.flip_every > 0 and k % case.flip_every == case.flip_every - 1
    has_wcs = not (case.no_wcs_every > 0 and k % case.no_wcs_every == 0)
    rotation = (180.0 if flipped else 0.0) + rng.normal(0, 0.15)
    jitter = rng.normal(0, case.jitter_pix, 2)
    return seeing, flipped, has_wcs, rotation, jitter


def make_heldout_dataset(red_dir, case: HeldOutCase) -> Path:
    red = Path(red_dir)
    red.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(case.seed)
    noise_rng = None if case.noise_seed is None else np.random.default_rng([case.seed, case.noise_seed])
    ra0, dec0 = 269.7597 + 0.01 * case.seed, -29.2114
    ra, dec, mag = _star_field(case, rng, ra0, dec0)
    flux = 10 ** (-0.4 * (mag - _ZERO_POINT_MAG))                      # e-/s above the atmosphere
    ny, nx = case.shape
    hot = (rng.integers(0, ny, case.n_hot_pixels), rng.integers(0, nx, case.n_hot_pixels))
    t0 = 61000.2 + case.seed
    times = t0 + np.sort(rng.uniform(0, 4.0, case.n_frames))
    peak_t, width_d = times[len(times) // 2], 0.6
    aperture_pix = _aperture_arcsec(case) / case.pixel_scale_arcsec
    rows = []
    for k, t in enumerate(times):
        seeing, flipped, has_wcs, rotation, jitter = _frame_plan(case, rng, k)
        fwhm_pix = seeing / case.pixel_scale_arcsec
        truth_wcs = _tan_wcs(ra0, dec0, (nx / 2 + jitter[0], ny / 2 + jitter[1]), case.pixel_scale_arcsec, rotation)
        x, y = truth_wcs.all_world2pix(np.column_stack([ra, dec]), 0).T
        transparency = rng.uniform(0.85, 1.0)
        amp = 1.0 + (case.event_amplification - 1.0) * math.exp(-0.5 * ((t - peak_t) / width_d) ** 2)
        rate = flux.copy()
        rate[0] *= amp
        counts = rate * transparency * case.exptime_s
        image = _render(case.shape, x, y, counts, fwhm_pix, axis_ratio=rng.uniform(0.88, 1.0))
        image += case.sky_e_per_s_per_pix * case.exptime_s
        expected = np.clip(image, 0, None)
        image = rng.poisson(expected).astype(np.float64)
        image += rng.normal(0, case.read_noise_e, case.shape)
        if noise_rng is not None:   # the case's stream drawn all the same: the rest of the plan is unchanged
            image = noise_rng.poisson(expected) + noise_rng.normal(0, case.read_noise_e, case.shape)
        noise_e, noise_expected_e = _aperture_noise(image - expected, expected + case.read_noise_e ** 2,
                                                    x[0], y[0], aperture_pix)
        image[hot] += 4000.0
        cr = (rng.integers(0, ny, case.n_cosmic_rays), rng.integers(0, nx, case.n_cosmic_rays))
        image[cr] += rng.uniform(800, 6000, case.n_cosmic_rays)
        header_wcs = None
        if has_wcs:
            off = rng.uniform(0, case.wcs_offset_arcsec) / 3600.0
            angle = rng.uniform(0, 2 * math.pi)
            header_wcs = _tan_wcs(ra0 + off * math.cos(angle) / math.cos(math.radians(dec0)),
                                  dec0 + off * math.sin(angle), (nx / 2 + jitter[0], ny / 2 + jitter[1]),
                                  case.pixel_scale_arcsec,
                                  rotation + rng.uniform(-1, 1) * case.wcs_rotation_error_deg)
        name = f"heldout-{case.name}-{k:03d}.fits"
        header = _header(case, float(t), header_wcs, flipped)
        _write(red / name, image, header, case)
        rows.append({"image": name, "mjd_mid": float(t) + case.exptime_s / 2 / 86400.0, "fwhm_arcsec": seeing,
                     "target_counts_per_s": float(rate[0]), "transparency": float(transparency), "x_target_pix": float(x[0]),
                     "y_target_pix": float(y[0]), "has_wcs": has_wcs, "flipped": flipped,
                     "target_noise_e": noise_e, "target_noise_expected_e": noise_expected_e})
    Table(rows=rows).write(red / TRUTH_NAME, format="ascii.ecsv", overwrite=True)
    _write_config(red, case, ra0, dec0)
    return red


def _aperture_arcsec(case: HeldOutCase) -> float:
    return case.aperture_arcsec or round(1.2 * float(np.mean(case.seeing_arcsec)), 2)


def _aperture_noise(noise: np.ndarray, variance: np.ndarray, x: float, y: float, r_pix: float):
    """The photon and read noise [e-] summed in the exact-overlap aperture at (x, y), and its
    expected standard deviation (pixel weights w add w x value and w^2 x variance)."""
    from photutils.aperture import CircularAperture

    mask = CircularAperture((x, y), r=r_pix).to_mask(method="exact")
    return float(np.sum(mask.multiply(noise))), float(np.sqrt(np.sum(mask.multiply(variance) * mask.data)))


def _write(path: Path, image: np.ndarray, header: fits.Header, case: HeldOutCase) -> None:
    if case.units == "adu":
        adu = np.clip(image / case.gain_e_per_adu + 100.0, 0, 65535)   # a 100 ADU pedestal
        hdu = fits.PrimaryHDU(np.round(adu).astype(np.uint16), header=header)
    else:
        hdu = fits.PrimaryHDU(image.astype(np.float32), header=header)
    hdu.writeto(path, overwrite=True)


def _write_config(red: Path, case: HeldOutCase, ra0: float, dec0: float) -> None:
    from astropy.coordinates import SkyCoord
    import astropy.units as u

    # the configured coordinates: coord_offset_arcsec from the star, towards the north-east
    off = case.coord_offset_arcsec / 3600.0 / math.sqrt(2)
    c = SkyCoord((ra0 + off / math.cos(math.radians(dec0))) * u.deg, (dec0 + off) * u.deg)
    aperture = _aperture_arcsec(case)
    config = {
        "target": {"name": f"HELDOUT-{case.name}", "RA": str(c.ra.to_string(unit=u.hour, sep=":", precision=3)),
                   "Dec": str(c.dec.to_string(unit=u.deg, sep=":", precision=2, alwayssign=True))},
        "photometry": {"aperture_arcsec": float(aperture)},
        "tom": {"upload": False},
    }
    for section, values in case.extra_config.items():
        config.setdefault(section, {}).update(values)
    (red / "reduction_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
