"""The faster catalogue routines of issue 14 build the catalogue the earlier ones built:
the same stars at the same positions with the same flags, fluxes equal to well within
their errors (the earlier LSQR stopped at its tolerance short of the least-squares
solution the direct solve reaches). The earlier routines are kept verbatim in
tests/catalogue_reference.py."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from luigi_phot.photometry import catalogue as catalogue_module
from luigi_phot.photometry.background import sky_mesh
from luigi_phot.photometry.catalogue import build_catalogue, choose_reference
from luigi_phot.photometry.detection import find_peaks
from luigi_phot.photometry.psf import MoffatPSF, _flux_design, fit_fluxes, render_stars
from luigi_phot.synthetic import SyntheticConfig, generate_dataset
from luigi_phot.tasks.base import load_config
from tests import catalogue_reference as reference


@pytest.fixture(scope="module")
def crowded_frame(tmp_path_factory):
    """One crowded 640x640 LCO-like frame (electrons, BPM, a hot column), its header WCS
    taken as it is (no astrometric catalogue here): (frame, config)."""
    red = tmp_path_factory.mktemp("catalogue_speed") / "ip"
    generate_dataset(red, SyntheticConfig(seed=1402, n_frames=1, shape=(640, 640), n_stars=2500, n_nights=1,
                                          compress="none", bad_column=200))
    path = red / "reduction_config.yaml"
    data = yaml.safe_load(path.read_text())
    data["photometry"]["astrometry"] = "header"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(red)
    choice = choose_reference(sorted(red.glob("*.fits")), cfg.camera, cfg.target.ra_deg, cfg.target.dec_deg)
    return choice.load(cfg.camera), cfg


def _build(frame, cfg):
    return build_catalogue(frame, cfg.target.ra_deg, cfg.target.dec_deg, cfg.photometry, key="k",
                           header_scatter=lambda: 1.0)


def test_the_catalogue_is_the_one_the_earlier_routines_build(crowded_frame, monkeypatch):
    frame, cfg = crowded_frame
    built = _build(frame, cfg)
    new = built.stars
    companions = next(int(n.split()[0]) for n in built.notes if "faint companions found" in n)
    with monkeypatch.context() as m:
        m.setattr(catalogue_module, "fit_fluxes", reference.fit_fluxes)
        m.setattr(catalogue_module, "find_peaks",
                  lambda *a, sky_image=None, **k: reference.find_peaks(*a, **k))
        old = _build(frame, cfg).stars
    assert len(new) == len(old) > 1000
    # detected stars keep their positions exactly; the faint companions found in the
    # star-subtracted image move by the change of the subtracted model (1e-5 px)
    first_pass = len(new) - companions
    assert first_pass > 500
    assert np.array_equal(new["x_ref"][:first_pass], old["x_ref"][:first_pass])
    assert np.array_equal(new["y_ref"][:first_pass], old["y_ref"][:first_pass])
    np.testing.assert_allclose(new["x_ref"], old["x_ref"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(new["y_ref"], old["y_ref"], rtol=0, atol=1e-4)
    for name in ("id", "saturated_ref", "detected", "is_target", "isolated"):
        assert np.array_equal(new[name], old[name]), name
    np.testing.assert_allclose(new["nn_dist"], old["nn_dist"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(new["flux_ref_err"][:first_pass], old["flux_ref_err"][:first_pass], rtol=1e-9)
    np.testing.assert_allclose(new["flux_ref_err"], old["flux_ref_err"], rtol=1e-6)
    finite = np.isfinite(old["flux_ref"])
    assert np.array_equal(finite, np.isfinite(new["flux_ref"]))
    shift = np.abs(new["flux_ref"] - old["flux_ref"])[finite] / old["flux_ref_err"][finite]
    assert shift.max() < 0.01


def test_fluxes_are_the_least_squares_solution(crowded_frame):
    """Against the earlier LSQR: equal within its stopping tolerance; and the normal
    equations are satisfied, which the iterative solution only approaches."""
    frame, _ = crowded_frame
    data = frame.data_e.astype(np.float64)
    mesh = sky_mesh(data, frame.pixel_flags)
    sky = mesh.level_image(data.shape)
    peaks = find_peaks(data, frame.pixel_flags, mesh, nsigma=5.0, smooth_sigma_pix=1.5, sky_image=sky)
    x, y = peaks.x + 0.2, peaks.y - 0.1
    psf = MoffatPSF(4.0, 0.05, 0.3, 3.0)
    variance = np.maximum(data - sky, 0) + float(np.median(mesh.sigma)) ** 2
    ok = frame.pixel_flags == 0
    reach = np.where(peaks.height > 2000, 20.0, 6.0)
    flux, err = fit_fluxes(data - sky, variance, x, y, psf, 6.0, pixel_ok=ok, model_radius_pix=reach)
    old_flux, old_err = reference.fit_fluxes(data - sky, variance, x, y, psf, 6.0, pixel_ok=ok,
                                             model_radius_pix=reach)
    np.testing.assert_allclose(err, old_err, rtol=1e-9)
    assert np.max(np.abs(flux - old_flux) / old_err) < 0.01
    # the gradient of chi^2 vanishes at the least-squares solution, which LSQR approaches
    a, b, order = _flux_design(data - sky, variance, x, y, psf, 6.0, ok, reach)
    gradient = np.abs(a.T @ (b - a @ flux[order])).max()
    assert gradient < 1e-6 * np.abs(a.T @ b).max()
    assert gradient < 0.01 * np.abs(a.T @ (b - a @ old_flux[order])).max()


def test_two_stars_at_one_position_fall_back_to_the_iterative_solver():
    """A singular system (two stars at one position) is solved by LSQR: their fluxes are
    finite and share the light of the one star that is there."""
    rng = np.random.default_rng(5)
    psf = MoffatPSF(3.0)
    shape = (80, 80)
    truth = render_stars(shape, np.array([40.3]), np.array([39.6]), np.array([5e4]), psf, np.array([20.0]),
                         phases=64).astype(np.float64)
    data = truth + rng.normal(0, 10.0, shape)
    flux, err = fit_fluxes(data, 100.0, np.array([40.3, 40.3, 20.0]), np.array([39.6, 39.6, 60.0]), psf, 6.0)
    assert np.isfinite(flux).all()
    assert abs(flux[0] + flux[1] - 5e4) < 5 * err[0]
    assert abs(flux[2]) < 5 * err[2]


@pytest.mark.parametrize("density", [0.005, 0.3])
def test_peaks_are_those_of_the_earlier_neighbour_test(density):
    """Few candidates (compared one by one) and many (compared by shifted images) give the
    peaks of the earlier routine, ties on flat tops included."""
    rng = np.random.default_rng(11)
    image = rng.normal(100.0, 3.0, (300, 420)).astype(np.float32)
    peaks_at = rng.random(image.shape) < density
    image[peaks_at] += rng.integers(10, 14, int(peaks_at.sum())).astype(np.float32)   # ties among neighbours
    image[50:53, 60:63] = 500.0                                                          # a flat top
    flags = np.zeros(image.shape, dtype=np.uint8)
    flags[:, 100] = 1
    mesh = sky_mesh(image, flags, box=64)
    for smooth in (None, 1.2):
        new = find_peaks(image, flags, mesh, nsigma=3.0, smooth_sigma_pix=smooth)
        old = reference.find_peaks(image, flags, mesh, nsigma=3.0, smooth_sigma_pix=smooth)
        assert len(new) > 10
        for name in ("x", "y", "height", "saturated"):
            assert np.array_equal(getattr(new, name), getattr(old, name)), (smooth, name)


def test_centroids_and_sky_image_taken_in_parts_are_the_same_numbers(crowded_frame):
    """Windowed centroids a few stars at a time, and the sky image in bands, give exactly
    what one pass over everything gives."""
    from luigi_phot.photometry.detection import windowed_centroids

    frame, _ = crowded_frame
    data = frame.data_e
    mesh = sky_mesh(data, frame.pixel_flags, box=64)
    peaks = find_peaks(data, frame.pixel_flags, mesh, nsigma=5.0)
    sky = mesh.level_at(peaks.x, peaks.y)
    whole = windowed_centroids(data, peaks.x, peaks.y, sky, 1.7, chunk_stars=10 ** 9)
    parts = windowed_centroids(data, peaks.x, peaks.y, sky, 1.7, chunk_stars=7)
    assert len(peaks) > 300
    for a, b in zip(whole, parts):
        assert np.array_equal(a, b)
    image = mesh.level_image(data.shape)
    ys, xs = np.mgrid[0: data.shape[0]: 37, 0: data.shape[1]: 41]
    np.testing.assert_allclose(image[ys, xs], mesh.level_at(xs, ys), rtol=1e-6)
