"""Times of observation: mid-exposure MJD (UTC) and BJD_TDB for the target.

BJD_TDB = JD(TDB) + light travel time to the solar-system barycentre towards
the target, from the observatory's location. Everything is computed offline
with astropy's built-in ephemeris; IERS downloads are switched off during the
computation (astropy's global IERS settings are changed only inside it, and
restored after), so a reduction never waits on the network.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

__all__ = ["bjd_tdb"]


@contextmanager
def _offline_iers():
    """astropy's IERS settings for an offline computation, for the duration of the block:
    no downloads, and the bundled IERS-A table accepted however old it is (its predicted
    UT1-UTC, good to milliseconds, is far below what the light travel time needs; without
    this every frame newer than the table's measurements fails)."""
    from astropy.utils import iers

    with iers.conf.set_temp("auto_download", False), iers.conf.set_temp("auto_max_age", None):
        yield


def bjd_tdb(mjd_utc, ra_deg: float, dec_deg: float, sites) -> np.ndarray:
    """BJD_TDB (days) for each mid-exposure MJD (UTC).

    sites: one (latitude deg, longitude deg east, height m) per time, or None
    where the site is unknown (the geocentre is used then; the error is at most
    21 ms, the light travel time across the Earth's radius)."""
    import astropy.units as u
    from astropy.coordinates import EarthLocation, SkyCoord
    from astropy.time import Time

    mjd = np.atleast_1d(np.asarray(mjd_utc, dtype=float))
    out = np.full(mjd.shape, np.nan)
    if mjd.size == 0:
        return out
    target = SkyCoord(ra_deg * u.deg, dec_deg * u.deg, frame="icrs")
    lat = np.array([s[0] if s is not None else np.nan for s in sites], dtype=float)
    lon = np.array([s[1] if s is not None else np.nan for s in sites], dtype=float)
    height = np.array([s[2] if s is not None else np.nan for s in sites], dtype=float)
    known = np.isfinite(lat) & np.isfinite(lon) & np.isfinite(mjd)
    geo = ~known & np.isfinite(mjd)
    with _offline_iers():
        if known.any():
            loc = EarthLocation.from_geodetic(lon[known] * u.deg, lat[known] * u.deg,
                                              np.nan_to_num(height[known]) * u.m)
            t = Time(mjd[known], format="mjd", scale="utc", location=loc)
            out[known] = (t.tdb + t.light_travel_time(target, kind="barycentric")).jd
        if geo.any():
            loc = EarthLocation.from_geocentric(0.0, 0.0, 0.0, unit=u.m)
            t = Time(mjd[geo], format="mjd", scale="utc", location=loc)
            out[geo] = (t.tdb + t.light_travel_time(target, kind="barycentric")).jd
    return out
