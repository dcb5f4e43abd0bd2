"""Header conventions of cameras the project's own generator does not write: frames
from the held-out generator (``tests/heldout.py``) read by ``read_frame_info``."""

from __future__ import annotations

import math

import pytest
from astropy.io import fits

from luigi_phot.photometry.frames import read_frame_info
from tests.heldout import HeldOutCase, make_heldout_dataset

QHY = HeldOutCase(name="qhy-headers", seed=9, shape=(200, 200), n_stars=60, n_frames=2, pixel_scale_arcsec=1.9,
                  units="adu", gain_e_per_adu=0.8, no_wcs_every=2)


@pytest.fixture(scope="module")
def qhy_frames(tmp_path_factory):
    red = make_heldout_dataset(tmp_path_factory.mktemp("qhy") / "rp", QHY)
    return sorted(red.glob("*.fits"))


def test_egain_is_the_gain_and_gain_is_only_the_driver_setting(qhy_frames):
    header = fits.getheader(qhy_frames[0])
    assert header["GAIN"] == 56 and header["EGAIN"] == pytest.approx(0.8)
    info = read_frame_info(qhy_frames[0])
    assert info.units == "adu"
    assert info.gain_e_per_adu == pytest.approx(0.8)


def test_a_frame_without_wcs_takes_its_pixel_scale_from_pixel_size_and_focal_length(qhy_frames):
    no_wcs = read_frame_info(qhy_frames[0])      # frame 0 carries no WCS (no_wcs_every=2)
    assert no_wcs.wcs is None
    assert no_wcs.pixel_scale_arcsec == pytest.approx(1.9, rel=0.01)
    with_wcs = read_frame_info(qhy_frames[1])
    assert with_wcs.wcs is not None
    assert math.isclose(with_wcs.pixel_scale_arcsec, 1.9, rel_tol=0.01)
