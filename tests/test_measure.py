"""The per-frame stage as an ordered list of named steps (photometry/measure.py), called
directly on a small generated dataset: which steps run, what they report, and that an
unexpected error names the step and the frame."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from luigi_phot.config import load_reduction_config
from luigi_phot.photometry import measure
from luigi_phot.photometry.catalogue import build_catalogue
from luigi_phot.photometry.frames import load_frame
from luigi_phot.photometry.measure import MEASURE_STEPS, FrameRejected, MeasureSettings, MeasureTuning, measure_frame
from luigi_phot.synthetic import SyntheticConfig, generate_dataset


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    red = tmp_path_factory.mktemp("measure_steps") / "rd"
    generate_dataset(red, SyntheticConfig(seed=21, n_frames=2, shape=(400, 400)))
    cfg = load_reduction_config(red / "reduction_config.yaml", check_tom_file=False)
    frames = sorted(red.glob("*.fits*"))
    cat = build_catalogue(load_frame(frames[0], cfg.camera), cfg.target.ra_deg, cfg.target.dec_deg,
                          cfg.photometry, key="steps")
    return cfg, cat, frames[1]


def test_every_step_runs_in_order_and_is_timed(small_dataset):
    cfg, cat, path = small_dataset
    seen = []
    m = measure_frame(load_frame(path, cfg.camera), cat, MeasureSettings.from_config(cfg.photometry),
                      progress=lambda fraction, message: seen.append(fraction))
    assert list(m.timings) == [s.name for s in MEASURE_STEPS]
    assert all(t >= 0 for t in m.timings.values())
    assert seen == sorted(seen) and len(seen) == sum(s.progress is not None for s in MEASURE_STEPS)
    assert m.header["SKYEST"][0] == "mean" and m.header["NEIGHSUB"][0]
    assert np.isfinite(m.columns["flux"][cat.target_index])


def test_plain_apertures_skip_the_model_steps(small_dataset):
    cfg, cat, path = small_dataset
    settings = dataclasses.replace(MeasureSettings.from_config(cfg.photometry), subtract_neighbours=False)
    m = measure_frame(load_frame(path, cfg.camera), cat, settings)
    assert "neighbours" not in m.timings and "variables" not in m.timings
    assert m.header["SKYEST"][0] == "median"
    assert not np.any(m.columns["neighbour_flux"])


def test_an_unexpected_error_names_the_step_and_the_frame(small_dataset, monkeypatch):
    cfg, cat, path = small_dataset

    def broken_fit(*args, **kwargs):
        raise ValueError("a bug in the PSF fit")

    monkeypatch.setattr(measure, "fit_psf", broken_fit)
    with pytest.raises(ValueError) as caught:
        measure_frame(load_frame(path, cfg.camera), cat, MeasureSettings.from_config(cfg.photometry))
    assert f"in step 'psf' of measuring {path.name}" in "\n".join(getattr(caught.value, "__notes__", []))


def test_the_tuning_reaches_the_steps(small_dataset):
    cfg, cat, path = small_dataset
    with pytest.raises(FrameRejected, match="too few stars for the PSF"):
        measure_frame(load_frame(path, cfg.camera), cat, MeasureSettings.from_config(cfg.photometry),
                      tuning=MeasureTuning(psf_min_stars=10_000))
