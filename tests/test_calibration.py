"""calibration.py: solve_ensemble on synthetic count rates with known per-frame zero
points (transparency, and a gradient across the field), photon noise, a variable star,
outlying points and a frame with too few stars: the scale recovered within its stated
errors, the variable star refused as a comparison and its own variation kept."""

from __future__ import annotations

import numpy as np

from luigi_phot.photometry.calibration import solve_ensemble

SHAPE = (1000, 1200)
N_FRAMES, N_STARS, EXPTIME_S = 24, 160, 60.0
REF_FRAME = 5
VARIABLE, TARGET = 3, 0


def _truth(seed: int = 1):
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    x = rng.uniform(0, nx, N_STARS)
    y = rng.uniform(0, ny, N_STARS)
    u, v = (x - (nx - 1) / 2) / (nx / 2), (y - (ny - 1) / 2) / (ny / 2)
    mean_rate = 10 ** rng.uniform(1.5, 3.5, N_STARS)                 # e/s
    mean_rate[[VARIABLE, TARGET]] = 1500.0                             # 0.3% photon noise per point
    transparency = rng.normal(0.0, 0.25, N_FRAMES)                   # ln scale per frame
    tilt = rng.normal(0.0, 0.03, (N_FRAMES, 2))                      # ln scale gradient across the field
    zeta = transparency[:, None] + tilt[:, :1] * u[None, :] + tilt[:, 1:] * v[None, :]
    variation = np.ones((N_FRAMES, N_STARS))
    variation[:, VARIABLE] = 1.0 + 0.4 * np.sin(np.arange(N_FRAMES) / 3.0)
    variation[:, TARGET] = 1.0 + 2.0 * np.exp(-0.5 * ((np.arange(N_FRAMES) - 12) / 3.0) ** 2)
    expected_e = mean_rate[None, :] * variation * np.exp(zeta) * EXPTIME_S
    counts = rng.poisson(expected_e).astype(float) + rng.normal(0.0, 30.0, expected_e.shape)
    rate = counts / EXPTIME_S
    rate_err = np.sqrt(expected_e + 30.0 ** 2) / EXPTIME_S
    hits = rng.integers(0, N_FRAMES, 20), rng.integers(0, N_STARS, 20)
    rate[hits] *= 1.5                                                 # unflagged outliers
    return x, y, rate, rate_err, zeta, variation, mean_rate


def test_solve_ensemble_recovers_the_zero_points_within_their_errors():
    x, y, rate, rate_err, zeta_true, variation, mean_rate = _truth()
    usable = np.ones(rate.shape, dtype=bool)
    candidates = np.ones(N_STARS, dtype=bool)
    candidates[TARGET] = False
    sol = solve_ensemble(rate, rate_err, usable, candidates, x, y, SHAPE, REF_FRAME)
    assert sol.frame_ok.all() and sol.order == 2
    zeta, zeta_err = sol.zeta(x, y)
    assert np.all(zeta[REF_FRAME] == 0.0) and np.all(zeta_err[REF_FRAME] == 0.0)
    expected = zeta_true - zeta_true[REF_FRAME][None, :]
    pull = (zeta - expected)[np.arange(N_FRAMES) != REF_FRAME] / np.hypot(
        zeta_err[np.arange(N_FRAMES) != REF_FRAME], zeta_err[REF_FRAME - 1])
    assert np.max(np.abs(zeta - expected)) < 0.01
    assert np.sqrt(np.mean(pull ** 2)) < 2.0
    # the variable star and the target set no scale; their variations survive calibration
    assert not sol.comparison[VARIABLE] and not sol.comparison[TARGET]
    # stars with a hit may go too (their scatter is large); most constant stars stay
    assert sol.comparison.sum() >= 0.8 * (N_STARS - 2)
    for star in (VARIABLE, TARGET):
        calibrated = rate[:, star] / np.exp(zeta[:, star])
        truth = mean_rate[star] * variation[:, star] * np.exp(zeta_true[REF_FRAME, star])
        assert np.median(np.abs(calibrated / truth - 1)) < 0.01
    assert np.all(sol.n_comparison >= 100)


def test_a_frame_with_too_few_comparison_stars_fails_and_the_others_do_not():
    x, y, rate, rate_err, zeta_true, _, _ = _truth(seed=2)
    usable = np.ones(rate.shape, dtype=bool)
    usable[7, 8:] = False                            # clouds: 8 stars left on frame 7
    sol = solve_ensemble(rate, rate_err, usable, np.ones(N_STARS, dtype=bool), x, y, SHAPE, REF_FRAME)
    assert not sol.frame_ok[7]
    assert sol.frame_ok[np.arange(N_FRAMES) != 7].all()
    zeta, _ = sol.zeta(x, y)
    ok = np.arange(N_FRAMES) != 7
    assert np.max(np.abs(zeta[ok] - (zeta_true[ok] - zeta_true[REF_FRAME]))) < 0.01


def test_without_a_reference_frame_the_mean_frame_is_the_anchor():
    x, y, rate, rate_err, zeta_true, _, _ = _truth(seed=3)
    sol = solve_ensemble(rate, rate_err, np.ones(rate.shape, dtype=bool), np.ones(N_STARS, dtype=bool), x, y,
                         SHAPE, ref_frame=-1, order=0)
    zeta, _ = sol.zeta(x, y)
    centred = zeta_true.mean(axis=1) - np.median(zeta_true.mean(axis=1))
    assert sol.order == 0
    assert np.max(np.abs(zeta[:, 0] - centred)) < 0.05


def test_calibrate_equals_rate_over_the_scale_with_the_scale_error_in_quadrature():
    """EnsembleSolution.calibrate (few temporaries, for 500 x 20,000) against the plain
    formula through zeta()."""
    x, y, rate, rate_err, *_ = _truth()
    usable = np.ones(rate.shape, dtype=bool)
    sol = solve_ensemble(rate, rate_err, usable, np.arange(N_STARS) != TARGET, x, y, SHAPE, REF_FRAME)
    zeta, zeta_err = sol.zeta(x, y)
    cal, cal_err = sol.calibrate(rate, rate_err, x, y)
    expected = rate / np.exp(zeta)
    np.testing.assert_allclose(cal, expected, rtol=1e-12)
    np.testing.assert_allclose(cal_err, np.sqrt((rate_err / np.exp(zeta)) ** 2 + (expected * zeta_err) ** 2),
                               rtol=1e-12)
    # overwrite: the same numbers, in the caller's arrays
    rate_copy, err_copy = rate.copy(), rate_err.copy()
    cal_in_place, err_in_place = sol.calibrate(rate_copy, err_copy, x, y, overwrite=True)
    assert cal_in_place is rate_copy and err_in_place is err_copy
    assert np.array_equal(cal_in_place, cal) and np.array_equal(err_in_place, cal_err)


def test_the_reference_frame_alone_is_its_own_scale():
    """A new dataset's first frame is its reference: calibrated as it is, exactly."""
    x, y, rate, rate_err, *_ = _truth()
    one = slice(REF_FRAME, REF_FRAME + 1)
    sol = solve_ensemble(rate[one], rate_err[one], np.ones((1, N_STARS), bool), np.arange(N_STARS) != TARGET,
                         x, y, SHAPE, 0)
    assert sol.frame_ok.tolist() == [True] and sol.n_comparison[0] > 100
    cal, cal_err = sol.calibrate(rate[one], rate_err[one], x, y)
    assert np.array_equal(cal, rate[one]) and np.array_equal(cal_err, rate_err[one])
    # a lone frame that is not the reference has no scale to be put on
    sol = solve_ensemble(rate[one], rate_err[one], np.ones((1, N_STARS), bool), np.arange(N_STARS) != TARGET,
                         x, y, SHAPE, -1)
    assert sol.frame_ok.tolist() == [False]


def test_two_frames_are_calibrated_against_each_other():
    """The second frame of a new dataset: every star has two points; the scale between
    the frames is recovered within its error, and the variable star set aside."""
    x, y, rate, rate_err, zeta_true, *_ = _truth(seed=3)
    two = [REF_FRAME, REF_FRAME + 1]
    sol = solve_ensemble(rate[two], rate_err[two], np.ones((2, N_STARS), bool), np.arange(N_STARS) != TARGET,
                         x, y, SHAPE, 0)
    assert sol.frame_ok.all()
    zeta, zeta_err = sol.zeta(x, y)
    expected = zeta_true[two[1]] - zeta_true[two[0]]
    assert np.all(zeta[0] == 0.0)
    assert np.max(np.abs(zeta[1] - expected)) < 0.01
    assert np.sqrt(np.mean(((zeta[1] - expected) / zeta_err[1]) ** 2)) < 3.0
    assert not sol.comparison[VARIABLE] or abs(np.log(rate[two[1], VARIABLE] / rate[two[0], VARIABLE])
                                               - expected[VARIABLE]) < 0.02


def test_column_medians_is_nanmedian_over_the_finite_values():
    import warnings

    from luigi_phot.photometry.calibration import column_medians

    rng = np.random.default_rng(7)
    for shape, dtype in (((1, 5), float), ((2, 7), float), ((7, 3), float), ((40, 300), float), ((41, 30), np.float32)):
        values = rng.normal(size=shape).astype(dtype)
        values[rng.random(shape) < 0.3] = np.nan
        values[:, 0] = np.nan                            # a star with no good point
        values[0, 1] = np.inf
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmedian(np.where(np.isfinite(values), values, np.nan), axis=0)
        before = values.copy()
        assert np.array_equal(column_medians(values), expected, equal_nan=True)
        assert np.array_equal(values, before, equal_nan=True)            # the caller's array untouched


def test_row_medians_is_numpy_median_for_odd_and_even_lengths():
    from luigi_phot.photometry.calibration import _row_medians

    rng = np.random.default_rng(8)
    for shape in ((5, 1), (5, 2), (30, 501), (30, 500)):
        for dtype in (np.float32, np.float64):
            rows = rng.lognormal(size=shape).astype(dtype)
            median = _row_medians(rows)
            assert median.dtype == dtype and np.array_equal(median, np.median(rows, axis=1))
