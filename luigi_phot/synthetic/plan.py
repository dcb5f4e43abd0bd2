"""The plan of a dataset: times, pointings, WCSs, seeing and the stars of every frame, before any pixel."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle
from astropy.table import Table
from astropy.wcs import WCS

from .config import LCO_SITES, SyntheticConfig, _MJD_EPOCH, _MS_PER_DAY, _READOUT_S
from .psf import MoffatPSF
from .sky import _draw_luminosity_function, _flux_to_mag, _mag_to_flux, airmass_at


def _format_ra(ra_deg: float, precision: int = 3) -> str:
    return str(Angle(ra_deg, u.deg).to_string(unit=u.hourangle, sep=":", precision=precision, pad=True))


def _format_dec(dec_deg: float, precision: int = 2) -> str:
    return str(Angle(dec_deg, u.deg).to_string(unit=u.deg, sep=":", precision=precision,
                                                pad=True, alwayssign=True))


def _nominal_wcs(cfg: SyntheticConfig) -> WCS:
    ny, nx = cfg.shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [cfg.field_ra_deg, cfg.field_dec_deg]
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    p = cfg.pixel_scale_arcsec / 3600.0
    w.wcs.cd = [[-p, 0.0], [0.0, p]]
    return w


def _rotation(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s], [s, c]])


def _frame_wcs(cfg: SyntheticConfig, offset_xy, rotation_deg: float, scale: float,
               crval=None, extra_rotation_deg: float = 0.0) -> WCS:
    """TAN WCS of one pointing: the field centre lands on the detector centre + offset."""
    ny, nx = cfg.shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval) if crval is not None else [cfg.field_ra_deg, cfg.field_dec_deg]
    w.wcs.crpix = [(nx + 1) / 2.0 + offset_xy[0], (ny + 1) / 2.0 + offset_xy[1]]
    p = cfg.pixel_scale_arcsec / 3600.0 * scale
    cd = np.array([[-p, 0.0], [0.0, p]]) @ _rotation(rotation_deg) @ _rotation(extra_rotation_deg)
    w.wcs.cd = cd
    return w


def true_frame_wcs(truth: Table, image: str) -> WCS:
    """The true WCS of frame `image` of a generated dataset, from its truth table
    (``synthetic_truth.ecsv``: the generator's parameters and the frame's pointing)."""
    cfg = SyntheticConfig(**truth.meta["generator_parameters"])
    row = truth[list(map(str, truth["image"])).index(str(image))]
    return _frame_wcs(cfg, (float(row["offset_x_pix"]), float(row["offset_y_pix"])),
                      float(row["rotation_deg"]), float(row["scale_factor"]))


@dataclass
class _Frame:
    """Everything drawn for one exposure before its pixels are made."""

    index: int
    name: str
    compressed: bool
    start_ms: int            # exposure start, ms since MJD 0
    day_obs: str
    frame_number: int
    seeing_arcsec: float
    beta: float
    ellipticity: float
    psf_angle_deg: float
    airmass: float
    cloud_mag: float
    transmission: float
    sky_e_per_pix: float
    sky_gradient_xy: tuple[float, float]  # e-/pix per pix
    offset_xy: tuple[float, float]
    rotation_deg: float
    scale: float
    wcs_true: WCS
    wcs_header: WCS
    l1fwhm_arcsec: float
    has_wcs: bool = True     # the header carries the WCS
    flipped: bool = False    # turned by 180 degrees (rotation_deg includes it)

    @property
    def mjd_start(self) -> float:
        return self.start_ms / _MS_PER_DAY


def _iso_from_ms(ms: int) -> str:
    return (_MJD_EPOCH + dt.timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


def _mjd_of_date(date: dt.date) -> int:
    return (dt.datetime(date.year, date.month, date.day) - _MJD_EPOCH).days


def _plan_times(cfg: SyntheticConfig, rng, target_ra: float, target_dec: float):
    """Exposure starts [ms since MJD 0] and DAY-OBS of every frame, sorted in time."""
    site = LCO_SITES[cfg.site]
    first = dt.date.fromisoformat(cfg.first_night)
    per_night = np.full(cfg.n_nights, cfg.n_frames // cfg.n_nights)
    per_night[rng.choice(cfg.n_nights, cfg.n_frames % cfg.n_nights, replace=False)] += 1
    min_gap_s = cfg.exptime_s + _READOUT_S
    starts, days = [], []
    for night, n in enumerate(per_night):
        if n == 0:
            continue
        day = first + dt.timedelta(days=math.floor(night * cfg.night_step_days))
        # local mean midnight after the evening of the first DAY-OBS, one step per night
        midnight = _mjd_of_date(first) + 1.0 - site.longitude_deg / 360.0 + night * cfg.night_step_days
        grid = midnight + np.linspace(-cfg.night_hours / 48.0, cfg.night_hours / 48.0, 193)
        am = airmass_at(grid, target_ra, target_dec, site)
        ok = am <= max(cfg.airmass_max, np.min(am) + 0.2)
        allowed = grid[ok]
        step = grid[1] - grid[0]
        t = np.sort(rng.choice(allowed, n) + rng.uniform(0, step, n))
        t_s = t * 86400.0
        for i in range(1, n):
            t_s[i] = max(t_s[i], t_s[i - 1] + min_gap_s + rng.uniform(0, 30))
        starts.extend(int(round(v * 1000.0)) for v in t_s)
        days.extend([day.strftime("%Y%m%d")] * n)
    order = np.argsort(starts, kind="stable")
    return [starts[i] for i in order], [days[i] for i in order]


@dataclass
class _Plan:
    stars: Table
    frames: list[_Frame]
    event: dict
    target_ra: float
    target_dec: float
    hot_pixels: tuple[np.ndarray, np.ndarray, np.ndarray]  # y, x, e-/s
    given_ra: float = 0.0     # the configured target coordinates (target_coord_offset_arcsec off)
    given_dec: float = 0.0
    target_column: int | None = None  # x index of the bad column the target drifts across


@dataclass
class _Stars:
    """The stars drawn so far: reference-frame pixel positions, magnitudes and kinds."""

    px: np.ndarray
    py: np.ndarray
    mag: np.ndarray
    kind: np.ndarray

    def add(self, x, y, mag, kind: str) -> None:
        self.px, self.py, self.mag = np.r_[self.px, x], np.r_[self.py, y], np.r_[self.mag, mag]
        self.kind = np.concatenate([self.kind, np.full(np.size(x), kind, dtype=self.kind.dtype)])


def _draw_field(cfg: SyntheticConfig, rng_sky) -> tuple[_Stars, float, float]:
    """Field stars, uniform on the tangent plane over the frame plus a margin (jitter and
    rotation bring new stars in at the edges; any rotation stays within the frame's
    circumscribed circle: the second term's cap), the target near the centre (within 5% of
    the frame size) and its optional neighbour. Returns the stars and the target's pixel."""
    ny, nx = cfg.shape
    margin = cfg.jitter_pix + min(math.radians(cfg.rotation_deg) * max(nx, ny) / 2, 0.21 * max(nx, ny)) + 40.0
    area_ratio = (nx + 2 * margin) * (ny + 2 * margin) / (nx * ny)
    n_drawn = int(rng_sky.poisson(cfg.n_stars * area_ratio)) if cfg.n_stars else 0
    px = rng_sky.uniform(-margin, nx - 1 + margin, n_drawn)
    py = rng_sky.uniform(-margin, ny - 1 + margin, n_drawn)
    mag = _draw_luminosity_function(rng_sky, n_drawn, cfg)
    stars = _Stars(px, py, mag, np.full(n_drawn, "field", dtype="<U10"))
    tx = (nx - 1) / 2 + rng_sky.uniform(-0.05, 0.05) * nx
    ty = (ny - 1) / 2 + rng_sky.uniform(-0.05, 0.05) * ny
    if cfg.target_isolation_arcsec is not None:
        d_arcsec = np.hypot(px - tx, py - ty) * cfg.pixel_scale_arcsec
        keep = ~((d_arcsec < cfg.target_isolation_arcsec) & (mag < cfg.target_mag_baseline + 3.0))
        stars = _Stars(px[keep], py[keep], mag[keep], stars.kind[keep])
    stars.add(tx, ty, cfg.target_mag_baseline, "target")
    if cfg.target_neighbour is not None:
        sep_pix = cfg.target_neighbour[0] / cfg.pixel_scale_arcsec
        pa = rng_sky.uniform(0, 2 * np.pi)
        stars.add(tx + sep_pix * math.cos(pa), ty + sep_pix * math.sin(pa),
                  cfg.target_mag_baseline + cfg.target_neighbour[1], "neighbour")
    return stars, tx, ty


def _frame_conditions(cfg: SyntheticConfig, rng_frames, n: int) -> dict[str, np.ndarray]:
    """Each frame's seeing, PSF shape, clouds, sky, pointing and header-WCS error draws."""
    c = {"seeing": rng_frames.uniform(*cfg.seeing_arcsec, n), "beta": rng_frames.uniform(*cfg.moffat_beta, n),
         "ellip": rng_frames.uniform(0, cfg.psf_ellipticity_max, n), "pa_psf": rng_frames.uniform(0, 180, n)}
    cloudy = rng_frames.random(n) < cfg.cloud_fraction
    c["cloud"] = np.where(cloudy, rng_frames.uniform(0, cfg.cloud_depth_mag_max, n), 0.0)
    c["sky_rate"] = rng_frames.uniform(*cfg.sky_e_per_s_per_pix, n)
    c["grad_dir"] = rng_frames.uniform(0, 2 * np.pi, n)
    c["offsets"] = rng_frames.uniform(-cfg.jitter_pix, cfg.jitter_pix, (n, 2))
    c["rot"] = rng_frames.uniform(-cfg.rotation_deg, cfg.rotation_deg, n)
    c["scale"] = 1.0 + rng_frames.uniform(-cfg.scale_change_frac, cfg.scale_change_frac, n)
    err_draw = rng_frames.uniform(0.5, 1.0, n)
    c["err_mag"] = cfg.wcs_error_arcsec * err_draw
    if cfg.wcs_error_range_arcsec is not None:   # the same draws, mapped onto the range
        lo, hi = cfg.wcs_error_range_arcsec
        c["err_mag"] = lo + (hi - lo) * (err_draw - 0.5) / 0.5
    c["err_dir"] = rng_frames.uniform(0, 2 * np.pi, n)
    c["err_rot"] = (rng_frames.normal(0, cfg.wcs_rotation_error_deg, n) if cfg.wcs_rotation_error_deg > 0
                    else np.zeros(n))
    c["l1fwhm"] = c["seeing"] * (1 + rng_frames.normal(0, 0.05, n))
    if cfg.compress == "all":
        c["compressed"] = np.ones(n, bool)
    elif cfg.compress == "mixed":
        c["compressed"] = rng_frames.permutation(np.arange(n) % 2 == 0)
    else:
        c["compressed"] = np.zeros(n, bool)
    return c


def _extra_options(cfg: SyntheticConfig, n: int) -> dict:
    """The options beyond the defaults (pointing and coordinate offsets, flips, frames
    without a WCS) draw from their own stream: the defaults' datasets stay as they were."""
    rng_extra = np.random.default_rng(np.random.SeedSequence([cfg.seed, 13]))
    pointing_dir, coord_dir = rng_extra.uniform(0, 2 * np.pi, 2)
    flipped = (np.arange(n) % cfg.flip_every == cfg.flip_every - 1) if cfg.flip_every else np.zeros(n, bool)
    no_wcs = np.zeros(n, bool)
    if cfg.no_wcs_fraction > 0:
        no_wcs[rng_extra.permutation(n)[: int(round(cfg.no_wcs_fraction * n))]] = True
    return {"pointing": (cfg.wcs_pointing_offset_arcsec * math.cos(pointing_dir),
                         cfg.wcs_pointing_offset_arcsec * math.sin(pointing_dir)),
            "coord_offset": (cfg.target_coord_offset_arcsec * math.cos(coord_dir),
                             cfg.target_coord_offset_arcsec * math.sin(coord_dir)),
            "flipped": flipped, "no_wcs": no_wcs}


def _plan_frame(cfg: SyntheticConfig, i: int, c: dict, extra: dict, name: str, start_ms: int, day: str,
                fnum: int, airmass: float) -> _Frame:
    """One exposure from its drawn conditions: true WCS, header WCS (the same pointing with
    CRVAL off by its error and a small rotation error), sky and transmission."""
    ny, nx = cfg.shape
    rot = c["rot"][i] + (180.0 if extra["flipped"][i] else 0.0)
    offsets, scale = c["offsets"][i], c["scale"][i]
    transmission = 10.0 ** (-0.4 * (cfg.extinction_mag_per_airmass * airmass + c["cloud"][i]))
    dxi = c["err_mag"][i] * math.cos(c["err_dir"][i]) + extra["pointing"][0]
    deta = c["err_mag"][i] * math.sin(c["err_dir"][i]) + extra["pointing"][1]
    crval = [cfg.field_ra_deg + dxi / 3600.0 / math.cos(math.radians(cfg.field_dec_deg)),
             cfg.field_dec_deg + deta / 3600.0]
    sky_e = c["sky_rate"][i] * cfg.exptime_s
    g = cfg.sky_gradient_frac * sky_e / (max(nx, ny) / 2.0)
    return _Frame(
        index=i, name=name, compressed=bool(c["compressed"][i]), start_ms=start_ms, day_obs=day,
        frame_number=fnum, seeing_arcsec=float(c["seeing"][i]), beta=float(c["beta"][i]),
        ellipticity=float(c["ellip"][i]), psf_angle_deg=float(c["pa_psf"][i]), airmass=airmass,
        cloud_mag=float(c["cloud"][i]), transmission=float(transmission), sky_e_per_pix=float(sky_e),
        sky_gradient_xy=(g * math.cos(c["grad_dir"][i]), g * math.sin(c["grad_dir"][i])),
        offset_xy=(float(offsets[0]), float(offsets[1])), rotation_deg=float(rot), scale=float(scale),
        wcs_true=_frame_wcs(cfg, offsets, rot, scale),
        wcs_header=_frame_wcs(cfg, offsets, rot, scale, crval=crval, extra_rotation_deg=c["err_rot"][i]),
        l1fwhm_arcsec=float(c["l1fwhm"][i]), has_wcs=not bool(extra["no_wcs"][i]), flipped=bool(extra["flipped"][i]))


def _plan_frames(cfg: SyntheticConfig, rng_frames, times, days, c: dict, extra: dict, tgt_ra: float,
                 tgt_dec: float) -> list[_Frame]:
    """Every exposure, named like LCO's (frame numbers per night, with other programmes'
    frames interleaved)."""
    site = LCO_SITES[cfg.site]
    frames: list[_Frame] = []
    frame_numbers: dict[str, int] = {}
    for i in range(cfg.n_frames):
        mjd_mid = times[i] / _MS_PER_DAY + cfg.exptime_s / 2 / 86400.0
        airmass = float(airmass_at(mjd_mid, tgt_ra, tgt_dec, site))
        fnum = frame_numbers.get(days[i], int(rng_frames.integers(8, 80)))
        fnum += int(rng_frames.geometric(0.5))  # other programmes' frames interleave
        frame_numbers[days[i]] = fnum
        ext = ".fits.fz" if c["compressed"][i] else ".fits"
        name = f"{cfg.site}{site.telescope_code}-{site.instrument}-{days[i]}-{fnum:04d}-e91{ext}"
        frames.append(_plan_frame(cfg, i, c, extra, name, times[i], days[i], fnum, airmass))
    return frames


def _add_saturating(cfg: SyntheticConfig, stars: _Stars, frames: list[_Frame], tx: float, ty: float,
                    rng_sky) -> None:
    """Stars that saturate in every frame: brighter than the faintest magnitude that
    saturates the worst frame (broadest PSF, least light), by 0.5-2 mag; away from the
    target, and off its columns (bleed trails run along columns) and the bad column's."""
    ny, nx = cfg.shape
    worst = min(MoffatPSF(f.seeing_arcsec / cfg.pixel_scale_arcsec * (1 + cfg.psf_field_variation),
                          f.beta, f.ellipticity).peak_density * f.transmission for f in frames)
    need_e_per_s = cfg.saturation_e / (worst * cfg.exptime_s)
    m_sat = cfg.zero_point_mag - 2.5 * math.log10(need_e_per_s)
    sx = rng_sky.uniform(0, nx - 1, cfg.n_saturated * 20)
    sy = rng_sky.uniform(0, ny - 1, cfg.n_saturated * 20)
    far = (np.hypot(sx - tx, sy - ty) * cfg.pixel_scale_arcsec > 40.0) & (np.abs(sx - tx) > 40)
    if cfg.bad_column is not None:
        far &= np.abs(sx - cfg.bad_column) > 10
    sx, sy = sx[far][:cfg.n_saturated], sy[far][:cfg.n_saturated]
    stars.add(sx, sy, rng_sky.uniform(m_sat - 2.0, m_sat - 0.5, sx.size), "saturating")


def _add_variables(cfg: SyntheticConfig, stars: _Stars, tx: float, ty: float, first_ms: int, rng_var) -> dict:
    """Variable stars among field stars of measurable brightness, away from the target (new
    stars when a sparse field has too few): their columns of the stars table."""
    ny, nx = cfg.shape
    n_all = stars.px.size
    var = {"is_variable": np.zeros(n_all, bool), "var_type": np.full(n_all, "", dtype="<U8"),
           "var_period_days": np.zeros(n_all), "var_amplitude_mag": np.zeros(n_all), "var_epoch_mjd": np.zeros(n_all)}
    if not cfg.n_variables:
        return var
    px, py, mag = stars.px, stars.py, stars.mag
    dist = np.hypot(px - tx, py - ty) * cfg.pixel_scale_arcsec
    inside = (px > 20) & (px < nx - 21) & (py > 20) & (py < ny - 21)
    cand = np.flatnonzero((stars.kind == "field") & inside & (dist > 10.0)
                          & (mag >= cfg.variable_mag_range[0]) & (mag <= cfg.variable_mag_range[1]))
    chosen = rng_var.choice(cand, min(cfg.n_variables, cand.size), replace=False)
    extra = cfg.n_variables - chosen.size
    if extra > 0:
        stars.add(rng_var.uniform(20, nx - 21, extra), rng_var.uniform(20, ny - 21, extra),
                  rng_var.uniform(*cfg.variable_mag_range, extra), "field")
        chosen = np.r_[chosen, np.arange(n_all, n_all + extra)]
        var = {k: np.r_[a, np.zeros(extra, a.dtype)] for k, a in var.items()}
    var["is_variable"][chosen] = True
    sinus = rng_var.random(chosen.size) < 0.6
    var["var_type"][chosen] = np.where(sinus, "sinusoid", "eclipse")
    period = np.where(sinus, 10 ** rng_var.uniform(np.log10(0.2), 1.0, chosen.size),
                      10 ** rng_var.uniform(np.log10(0.5), np.log10(5.0), chosen.size))
    var["var_period_days"][chosen] = period
    var["var_amplitude_mag"][chosen] = rng_var.uniform(*cfg.variable_amplitude_mag, chosen.size)
    var["var_epoch_mjd"][chosen] = first_ms / _MS_PER_DAY + rng_var.uniform(0, 1, chosen.size) * period
    return var


def _event(cfg: SyntheticConfig, times) -> dict:
    """The target's blended point-source point-lens event (peak half a day after the last
    frame unless configured)."""
    mid_last = times[-1] / _MS_PER_DAY + cfg.exptime_s / 2 / 86400.0
    t0 = cfg.event_t0_mjd if cfg.event_t0_mjd is not None else mid_last + 0.5
    if cfg.event_t0_mjd is None and cfg.event_t0_span_fraction is not None:
        mid_first = times[0] / _MS_PER_DAY + cfg.exptime_s / 2 / 86400.0
        t0 = mid_first + cfg.event_t0_span_fraction * (mid_last - mid_first)
    f_base = float(_mag_to_flux(cfg.target_mag_baseline, cfg.zero_point_mag))
    f_blend = cfg.event_blend_fraction * f_base
    f_source = f_base - f_blend
    return {
        "model": "blended point-source point-lens: F = Fs * A(u) + Fb",
        "t0_mjd": float(t0), "tE_days": cfg.event_tE_days, "u0": cfg.event_u0,
        "source_mag": float(_flux_to_mag(f_source, cfg.zero_point_mag)),
        "source_flux_e_per_s": f_source,
        "blend_mag": float(_flux_to_mag(f_blend, cfg.zero_point_mag)) if f_blend > 0 else None,
        "blend_flux_e_per_s": f_blend,
        "blend_fraction": cfg.event_blend_fraction,
        "baseline_mag": cfg.target_mag_baseline,
    }


def _stars_table(cfg: SyntheticConfig, nominal: WCS, stars: _Stars, var: dict, event: dict) -> Table:
    """Every star drawn, on the sky, with its variability and the event in the meta."""
    ra, dec = nominal.wcs_pix2world(stars.px, stars.py, 0)
    table = Table()
    table["id"] = np.arange(1, stars.px.size + 1)
    table["ra_deg"] = ra * u.deg
    table["dec_deg"] = dec * u.deg
    table["mag"] = stars.mag
    table["flux_e_per_s"] = _mag_to_flux(stars.mag, cfg.zero_point_mag) * u.electron / u.s
    table["is_target"] = stars.kind == "target"
    table["is_neighbour"] = stars.kind == "neighbour"
    table["is_saturating"] = stars.kind == "saturating"
    for key in ("is_variable", "var_type"):
        table[key] = var[key]
    table["var_period_days"] = var["var_period_days"] * u.day
    table["var_amplitude_mag"] = var["var_amplitude_mag"]
    table["var_epoch_mjd"] = var["var_epoch_mjd"]
    table.meta.update({
        "description": "Every star drawn for the synthetic field (including those off the frame edges "
                       "and far below the detection limit). mag/flux_e_per_s: baseline (target: source + "
                       "blend) or mean (sinusoid) or out-of-eclipse (eclipse) values, above the atmosphere.",
        "zero_point_mag": cfg.zero_point_mag,
        "mag_definition": "mag = zero_point_mag - 2.5 log10(flux_e_per_s)",
        "variability": "sinusoid: mag + 0.5*amp*sin(2 pi phase); eclipse: mag + amp*exp(-0.5*(dphase/0.04)^2), "
                       "phase = (t - var_epoch_mjd)/var_period_days mod 1",
        "event": event,
        "seed": cfg.seed,
    })
    return table


def _make_plan(cfg: SyntheticConfig) -> _Plan:
    """The whole dataset before any pixel. Four random streams (sky, frames, detector,
    variables) and one for the options beyond the defaults, each drawn in a fixed order."""
    seeds = np.random.SeedSequence(cfg.seed).spawn(4)
    rng_sky, rng_frames, rng_det, rng_var = (np.random.default_rng(s) for s in seeds)
    ny, nx = cfg.shape
    nominal = _nominal_wcs(cfg)
    stars, tx, ty = _draw_field(cfg, rng_sky)
    times, days = _plan_times(cfg, rng_frames, *nominal.wcs_pix2world([[tx, ty]], 0)[0])
    conditions = _frame_conditions(cfg, rng_frames, cfg.n_frames)
    tgt_ra, tgt_dec = (float(v) for v in nominal.wcs_pix2world([[tx, ty]], 0)[0])
    extra = _extra_options(cfg, cfg.n_frames)
    frames = _plan_frames(cfg, rng_frames, times, days, conditions, extra, tgt_ra, tgt_dec)
    if cfg.n_saturated:
        _add_saturating(cfg, stars, frames, tx, ty, rng_sky)
    var = _add_variables(cfg, stars, tx, ty, times[0], rng_var)
    event = _event(cfg, times)
    n_hot = cfg.n_hot_pixels
    hot = (rng_det.integers(0, ny, n_hot), rng_det.integers(0, nx, n_hot),
           10 ** rng_det.uniform(np.log10(5.0), np.log10(300.0), n_hot))
    dx_arcsec, dy_arcsec = extra["coord_offset"]
    return _Plan(stars=_stars_table(cfg, nominal, stars, var, event), frames=frames, event=event,
                 target_ra=tgt_ra, target_dec=tgt_dec, hot_pixels=hot,
                 given_ra=tgt_ra + dx_arcsec / 3600.0 / math.cos(math.radians(tgt_dec)),
                 given_dec=tgt_dec + dy_arcsec / 3600.0,
                 target_column=_target_column(cfg, frames, tgt_ra, tgt_dec))


def _target_column(cfg: SyntheticConfig, frames: list[_Frame], ra_deg: float, dec_deg: float) -> int | None:
    """The x index of a column that passes within target_column_reach_arcsec of the target's
    centre in the fraction of frames closest to target_column_fraction (of equally good
    columns, the one nearest the target's median position). Draws no random numbers, so
    the rest of the dataset is the same with or without it."""
    if cfg.target_column_fraction is None:
        return None
    tx = np.array([float(f.wcs_true.wcs_world2pix([[ra_deg, dec_deg]], 0)[0][0]) for f in frames])
    reach = cfg.target_column_reach_arcsec / cfg.pixel_scale_arcsec
    cols = np.arange(math.floor(tx.min() - reach), math.ceil(tx.max() + reach) + 1)
    cols = cols[(cols >= 0) & (cols < cfg.shape[1])]
    if cols.size == 0:
        return None
    fraction = (np.abs(tx[None, :] - cols[:, None]) <= reach).mean(axis=1)
    order = np.lexsort((np.abs(cols - np.median(tx)), np.abs(fraction - cfg.target_column_fraction)))
    return int(cols[order[0]])
