"""The pixels of one planned frame: stars, sky, noise, cosmic rays, defects, saturation."""

from __future__ import annotations

import math

import numpy as np

from .config import BPM_BAD_PIXEL, BPM_COSMIC_RAY, BPM_SATURATED, SyntheticConfig
from .plan import _Frame, _Plan
from .psf import MoffatPSF, render_moffat_stars
from .sky import star_fluxes_e_per_s


_N_PSF_ZONES = 21  # 0.25% FWHM steps at the default 5% variation: smooth to the photometry


def _render_frame(cfg: SyntheticConfig, plan: _Plan, frame: _Frame, rng) -> dict:
    """One frame's pixels (SCI, BPM, ERR in electrons) and what the truth table needs."""
    ny, nx = cfg.shape
    stars = plan.stars
    mjd_mid = frame.mjd_start + cfg.exptime_s / 2 / 86400.0
    x, y = frame.wcs_true.wcs_world2pix(np.asarray(stars["ra_deg"]), np.asarray(stars["dec_deg"]), 0)
    flux_e = star_fluxes_e_per_s(stars, mjd_mid) * frame.transmission * cfg.exptime_s
    is_target = np.asarray(stars["is_target"])
    image = _expected_image(cfg, plan, frame, x, y, flux_e, is_target)
    data = _add_noise(cfg, image, rng)
    del image
    bpm = np.zeros((ny, nx), np.uint8)
    n_cr = _add_cosmic_rays(cfg, data, bpm, rng)
    hy, hx, _ = plan.hot_pixels
    bpm[hy, hx] |= BPM_BAD_PIXEL
    sat_mask = _saturate(data, cfg.saturation_e, cfg.bleed_saturation)
    bpm[sat_mask] |= BPM_SATURATED
    for column, v in ((cfg.bad_column, cfg.bad_column_value_e), (plan.target_column, cfg.target_column_value_e)):
        if column is not None:
            data[:, column] = v + math.sqrt(max(v, 0.0)) * rng.standard_normal(ny, dtype=np.float32)
            bpm[:, column] |= BPM_BAD_PIXEL
    rn = np.float32(cfg.read_noise_e)
    err = np.maximum(data, 0)
    err += rn * rn
    np.sqrt(err, out=err)
    t_idx = np.flatnonzero(is_target)[0]
    return {"sci": data, "bpm": bpm, "err": err, "n_cosmic_rays": n_cr,
            "n_saturated_pix": int(sat_mask.sum()),
            "target_x": float(x[t_idx]), "target_y": float(y[t_idx]),
            "target_flux_e_per_s": float(flux_e[t_idx] / (frame.transmission * cfg.exptime_s))}


def _expected_image(cfg: SyntheticConfig, plan: _Plan, frame: _Frame, x, y, flux_e, is_target) -> np.ndarray:
    """The noiseless image [e-]: stars, sky with a slight linear gradient, hot pixels.
    The PSF's FWHM grows as (distance from the detector centre)^2, by psf_field_variation
    in the corners; the field is cut into zones of equal FWHM step, each rendered with its
    own PSF."""
    ny, nx = cfg.shape
    base = MoffatPSF(frame.seeing_arcsec / cfg.pixel_scale_arcsec, frame.beta,
                     frame.ellipticity, frame.psf_angle_deg)
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    rho2 = np.minimum(((x - cx) ** 2 + (y - cy) ** 2) / (cx * cx + cy * cy), 1.0)
    zone = np.rint(rho2 * (_N_PSF_ZONES - 1)).astype(int)
    image = np.zeros((ny, nx), np.float32)
    min_r = np.where(is_target, 64.0, 1.5 * base.fwhm_pix)
    for z in range(_N_PSF_ZONES):
        sel = zone == z
        if not sel.any():
            continue
        psf = base.scaled(1.0 + cfg.psf_field_variation * z / (_N_PSF_ZONES - 1))
        render_moffat_stars(image, x[sel], y[sel], flux_e[sel], psf, floor_e=cfg.psf_stamp_floor_e,
                            min_radius_pix=min_r[sel], max_radius_pix=cfg.psf_stamp_max_radius_pix)
    # the sky's row and column parts added in place: no full-frame temporaries
    gx, gy = frame.sky_gradient_xy
    image += (frame.sky_e_per_pix + gx * (np.arange(nx) - cx)).astype(np.float32)[None, :]
    image += (gy * (np.arange(ny) - cy)).astype(np.float32)[:, None]
    hy, hx, hot_rate = plan.hot_pixels
    np.add.at(image, (hy, hx), (hot_rate * cfg.exptime_s).astype(np.float32))
    return image


def _add_noise(cfg: SyntheticConfig, image: np.ndarray, rng) -> np.ndarray:
    """Photon noise (Gaussian with variance = expectation where that is at least
    poisson_exact_below_e, exact Poisson below) and read noise, in one draw where Gaussian."""
    ny, nx = cfg.shape
    rn = np.float32(cfg.read_noise_e)
    data = rng.standard_normal((ny, nx), dtype=np.float32)
    sigma = np.maximum(image, 0)
    sigma += rn * rn
    np.sqrt(sigma, out=sigma)
    data *= sigma
    del sigma
    data += image
    low = image < cfg.poisson_exact_below_e
    if low.any():
        lam = np.maximum(image[low], 0)
        data[low] = rng.poisson(lam) + rn * rng.standard_normal(lam.size, dtype=np.float32)
    return data


def _add_cosmic_rays(cfg: SyntheticConfig, data: np.ndarray, bpm: np.ndarray, rng) -> int:
    """Cosmic rays: straight tracks 1-10 px long, sharp (not seen through the atmosphere),
    marked in the BPM only when bpm_marks_cosmics. Returns how many."""
    ny, nx = cfg.shape
    n_cr = int(rng.poisson(cfg.cosmic_rays_per_mpix_per_s * nx * ny / 1e6 * cfg.exptime_s))
    if not n_cr:
        return 0
    x0 = rng.uniform(-0.5, nx - 0.5, n_cr)
    y0 = rng.uniform(-0.5, ny - 0.5, n_cr)
    length = rng.uniform(0, 9, n_cr)
    ang = rng.uniform(0, np.pi, n_cr)
    level = 10 ** rng.uniform(np.log10(300), np.log10(5000), n_cr)
    t = np.arange(0, 9.01, 0.3)
    along = np.minimum(t[None, :], length[:, None])
    cxs = np.rint(x0[:, None] + along * np.cos(ang)[:, None]).astype(np.int64)
    cys = np.rint(y0[:, None] + along * np.sin(ang)[:, None]).astype(np.int64)
    ok = (cxs >= 0) & (cxs < nx) & (cys >= 0) & (cys < ny)
    ids = np.broadcast_to(np.arange(n_cr)[:, None], cxs.shape)
    key = np.unique(ids[ok] * (nx * ny) + cys[ok] * nx + cxs[ok])
    cr_id, pix = key // (nx * ny), key % (nx * ny)
    deposit = level[cr_id] * rng.uniform(0.5, 1.5, pix.size)
    np.add.at(data.reshape(-1), pix, deposit.astype(np.float32))
    if cfg.bpm_marks_cosmics:
        bpm.reshape(-1)[pix] |= BPM_COSMIC_RAY
    return n_cr


def _saturate(data: np.ndarray, saturation: float, bleed: bool) -> np.ndarray:
    """Clip at the full well, moving the excess charge up and down the column when
    ``bleed``; returns the mask of pixels left at the saturation level."""
    sat = np.float32(saturation)
    over = data > sat
    mask = over.copy()
    if not over.any():
        return mask
    ny = data.shape[0]
    for c in np.flatnonzero(over.any(axis=0)):
        col = data[:, c]
        rows = np.flatnonzero(col > sat)
        runs = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
        for run in runs:
            if run.size == 0:
                continue
            excess = float((col[run] - sat).sum())
            col[run] = sat
            mask[run, c] = True
            if not bleed:
                continue
            for step, start in ((1, run[-1] + 1), (-1, run[0] - 1)):
                left = excess / 2.0
                p = start
                while left > 0 and 0 <= p < ny:
                    room = float(sat - col[p])
                    if room <= 0:  # another saturated pixel: its excess joins the trail
                        left += -room
                        col[p] = sat
                        mask[p, c] = True
                    elif left >= room:
                        left -= room
                        col[p] = sat
                        mask[p, c] = True
                    else:
                        col[p] += np.float32(left)
                        left = 0.0
                    p += step
    return mask
