"""The sky the generator draws: star fluxes, the microlensing event, airmass, the luminosity function."""

from __future__ import annotations

import math

import numpy as np
from astropy.table import Table

from .config import LCO_SITES, LcoSite, SyntheticConfig


def paczynski_magnification(t_mjd, t0_mjd: float, tE_days: float, u0: float) -> np.ndarray:
    """Point-source point-lens magnification A(u) = (u^2 + 2) / (u sqrt(u^2 + 4)),
    u(t) = sqrt(u0^2 + ((t - t0) / tE)^2)."""
    tau = (np.asarray(t_mjd, dtype=float) - t0_mjd) / tE_days
    uu = np.sqrt(u0 * u0 + tau * tau)
    return (uu * uu + 2.0) / (uu * np.sqrt(uu * uu + 4.0))


def _mag_to_flux(mag, zero_point_mag: float):
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - zero_point_mag))


def _flux_to_mag(flux, zero_point_mag: float):
    return zero_point_mag - 2.5 * np.log10(np.asarray(flux, dtype=float))


def star_fluxes_e_per_s(stars: Table, t_mjd: float) -> np.ndarray:
    """Flux of every star of a ``synthetic_stars.ecsv`` table at time ``t_mjd``
    [e-/s above the atmosphere]: constant stars, variables and the microlensed target."""
    flux = np.array(stars["flux_e_per_s"], dtype=float)
    var = np.asarray(stars["is_variable"], dtype=bool)
    if var.any():
        kind = np.asarray(stars["var_type"])[var]
        period = np.asarray(stars["var_period_days"], dtype=float)[var]
        amp = np.asarray(stars["var_amplitude_mag"], dtype=float)[var]
        epoch = np.asarray(stars["var_epoch_mjd"], dtype=float)[var]
        phase = ((t_mjd - epoch) / period) % 1.0
        dmag = np.where(kind == "sinusoid",
                        -0.5 * amp * np.sin(2 * np.pi * phase),
                        # eclipse: a Gaussian dip of width 4% of the period, at phase 0
                        amp * np.exp(-0.5 * (np.minimum(phase, 1 - phase) / 0.04) ** 2))
        flux[var] *= 10.0 ** (-0.4 * dmag)
    tgt = np.asarray(stars["is_target"], dtype=bool)
    if tgt.any():
        m = stars.meta["event"]
        amp = paczynski_magnification(t_mjd, m["t0_mjd"], m["tE_days"], m["u0"])
        flux[tgt] = m["source_flux_e_per_s"] * amp + m["blend_flux_e_per_s"]
    return flux


def _gmst_deg(mjd):
    d = np.asarray(mjd, dtype=float) - 51544.5
    t = d / 36525.0
    return (280.46061837 + 360.98564736629 * d + 0.000387933 * t * t - t ** 3 / 38710000.0) % 360.0


def airmass_at(mjd, ra_deg: float, dec_deg: float, site: LcoSite | str) -> np.ndarray:
    """Airmass (Hardie 1962 polynomial in sec z) of (ra, dec) seen from an LCO site at UTC MJD.
    Returns inf below the horizon. UT1 = UTC and no refraction: good to ~0.01 above airmass 3."""
    site = LCO_SITES[site] if isinstance(site, str) else site
    lat = math.radians(site.latitude_deg)
    dec = math.radians(dec_deg)
    ha = np.radians(_gmst_deg(mjd) + site.longitude_deg - ra_deg)
    sin_alt = math.sin(lat) * math.sin(dec) + math.cos(lat) * math.cos(dec) * np.cos(ha)
    with np.errstate(divide="ignore", invalid="ignore"):
        sec = 1.0 / sin_alt
        s1 = sec - 1.0
        x = sec - 0.0018167 * s1 - 0.002875 * s1 ** 2 - 0.0008083 * s1 ** 3
    return np.where(sin_alt > 0.05, x, np.inf)


def _draw_luminosity_function(rng, n: int, cfg: SyntheticConfig) -> np.ndarray:
    s = cfg.luminosity_slope
    lo, hi = 10.0 ** (s * cfg.mag_bright), 10.0 ** (s * cfg.mag_faint)
    return np.log10(lo + rng.random(n) * (hi - lo)) / s
