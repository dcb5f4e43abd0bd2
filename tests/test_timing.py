"""timing.py: BJD_TDB against astropy's own light-travel-time computation for an
observatory and a target, the size of the barycentric correction against the light
time across the Earth's orbit, and astropy's global IERS settings left as they were."""

from __future__ import annotations

import astropy.constants as const
import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import EarthLocation, GeocentricTrueEcliptic, SkyCoord
from astropy.time import Time
from astropy.utils import iers

from luigi_phot.photometry.timing import bjd_tdb

#: LCO's Cerro Tololo site (lat deg, lon deg east, height m) and a Galactic-bulge target
CTIO = (-30.1673, -70.8049, 2198.0)
RA_DEG, DEC_DEG = 268.45, -29.53
#: one AU over c [s]
AU_LIGHT_S = (1 * u.au / const.c).to_value(u.s)


def _astropy_bjd(mjd, site):
    loc = EarthLocation.from_geodetic(site[1] * u.deg, site[0] * u.deg, site[2] * u.m)
    t = Time(mjd, format="mjd", scale="utc", location=loc)
    with iers.conf.set_temp("auto_download", False):
        return (t.tdb + t.light_travel_time(SkyCoord(RA_DEG * u.deg, DEC_DEG * u.deg),
                                            kind="barycentric")).jd


def test_bjd_tdb_is_astropys_for_a_site_and_target():
    mjd = 61190.0 + np.linspace(0.0, 330.0, 12) + 0.137
    bjd = bjd_tdb(mjd, RA_DEG, DEC_DEG, [CTIO] * mjd.size)
    assert np.max(np.abs(bjd - _astropy_bjd(mjd, CTIO))) * 86400 < 1e-4


def test_the_correction_follows_the_earths_orbit():
    """BJD_TDB - JD(TDB) is the light time along the Earth-barycentre line projected on the
    target's direction: over a year it swings by about 1 AU/c x cos(ecliptic latitude)."""
    mjd = 61190.0 + np.arange(0.0, 366.0, 3.0)
    bjd = bjd_tdb(mjd, RA_DEG, DEC_DEG, [CTIO] * mjd.size)
    correction_s = (bjd - Time(mjd, format="mjd", scale="utc").tdb.jd) * 86400
    beta = SkyCoord(RA_DEG * u.deg, DEC_DEG * u.deg).transform_to(GeocentricTrueEcliptic()).lat
    amplitude_s = 0.5 * (correction_s.max() - correction_s.min())
    assert amplitude_s == pytest.approx(AU_LIGHT_S * np.cos(beta.to_value(u.rad)), rel=0.03)


def test_an_unknown_site_is_the_geocentre_within_the_earths_light_radius():
    mjd = np.array([61300.2, 61300.4, np.nan, 61300.6])
    sites = [CTIO, None, CTIO, CTIO]
    bjd = bjd_tdb(mjd, RA_DEG, DEC_DEG, sites)
    assert np.isnan(bjd[2]) and np.isfinite(bjd[[0, 1, 3]]).all()
    at_site = bjd_tdb(mjd[[1]], RA_DEG, DEC_DEG, [CTIO])
    earth_radius_s = (const.R_earth / const.c).to_value(u.s)
    assert 0 < abs(bjd[1] - at_site[0]) * 86400 <= earth_radius_s
    assert bjd[0] == pytest.approx(_astropy_bjd(mjd[0], CTIO), abs=1e-9)
    assert bjd_tdb(np.array([]), RA_DEG, DEC_DEG, []).size == 0


def test_astropys_global_iers_settings_are_left_as_they_were():
    with iers.conf.set_temp("auto_download", True), iers.conf.set_temp("auto_max_age", 30.0):
        bjd_tdb([61300.2], RA_DEG, DEC_DEG, [CTIO])
        assert iers.conf.auto_download is True
        assert iers.conf.auto_max_age == 30.0
    before = (iers.conf.auto_download, iers.conf.auto_max_age)
    bjd_tdb([61300.2], RA_DEG, DEC_DEG, [None])
    assert (iers.conf.auto_download, iers.conf.auto_max_age) == before
