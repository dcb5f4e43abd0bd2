"""The reported flux error is the scatter a measurement really has.

The contamination error of a neighbour re-fitted at or below zero."""

from __future__ import annotations

import math

import numpy as np

from luigi_phot.photometry.measure import NeighbourModel
from luigi_phot.photometry.psf import MoffatPSF as ModelPSF


def test_a_neighbour_refitted_below_zero_keeps_a_bounded_contamination_error():
    """A faint catalogue star that is not on this frame (a detection of the reference's
    noise, or a star that faded) is re-fitted near or below zero flux; the error of its
    light in its neighbour's aperture is then its fit's error times the fraction of its
    light falling there, not a number divided by zero."""
    rng = np.random.default_rng(5)
    psf = ModelPSF(fwhm_pix=4.0, beta=3.0)
    x, y = np.array([50.0, 56.0]), np.array([50.0, 50.5])
    faint_e = 2000.0
    model = NeighbourModel(x, y, np.array([50_000.0, faint_e]), np.array([0.01, 0.05]), psf, None,
                           r_ap=5.0, r_out=15.0, sky_sigma=20.0, shape=(100, 100))
    data = rng.normal(0.0, 20.0, (100, 100))
    model.subtract_from(data, np.array([1]), np.array([2.0 * faint_e]))   # the faint star: a hole
    flux = np.array([50_000.0 * model.own_fraction[0], -faint_e * model.own_fraction[1]])
    changed = model.update_variables(flux, np.array([300.0, 300.0]), np.ones(2, bool), data, np.ones(data.shape, bool),
                                     400.0, always=(1,))
    assert 1 in changed and model.flux[1] < 0
    light, var = model.contamination()
    # at most its whole re-fitted flux's error (a few hundred e- here), not 1e9
    assert math.sqrt(var[0]) < abs(model.flux[1]) + 1000.0
