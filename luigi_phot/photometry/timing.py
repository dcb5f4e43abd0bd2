"""Times of observation: mid-exposure MJD (UTC) and BJD_TDB for the target.

BJD_TDB = JD(TDB) + light travel time to the solar-system barycentre towards
the target, from the observatory's location. Everything is computed offline
with astropy's built-in ephemeris; IERS downloads are switched off, so a
reduction never waits on the network.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bjd_tdb"]


def bjd_tdb(mjd_utc, ra_deg: float, dec_deg: float, sites) -> np.ndarray:
    """BJD_TDB (days) for each mid-exposure MJD (UTC).

    sites: one (latitude deg, longitude deg east, height m) per time, or None
    where the site is unknown (the geocentre is used then; the error is at most
    21 ms, the light travel time across the Earth's radius)."""
    import astropy.units as u
    from astropy.coordinates import EarthLocation, SkyCoord
    from astropy.time import Time
    from astropy.utils import iers

    iers.conf.auto_download = False
    # Without downloads the bundled IERS-A table ages; its predicted UT1-UTC (good to
    # milliseconds, far below what the light travel time needs) must still be accepted,
    # or every frame newer than the table's measurements fails.
    iers.conf.auto_max_age = None
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
    if known.any():
        loc = EarthLocation.from_geodetic(lon[known] * u.deg, lat[known] * u.deg, np.nan_to_num(height[known]) * u.m)
        t = Time(mjd[known], format="mjd", scale="utc", location=loc)
        out[known] = (t.tdb + t.light_travel_time(target, kind="barycentric")).jd
    if geo.any():
        loc = EarthLocation.from_geocentric(0.0, 0.0, 0.0, unit=u.m)
        t = Time(mjd[geo], format="mjd", scale="utc", location=loc)
        out[geo] = (t.tdb + t.light_travel_time(target, kind="barycentric")).jd
    return out
