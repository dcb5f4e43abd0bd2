"""Crowded fields: a target with a star as bright as itself 1.75 aperture radii away,
seeing 1.1-3.2", reduced with neighbour subtraction (the default) and with plain
apertures, compared with the injected light curve. The plain reduction is the
control: it shows the data really do leak the neighbour's light with the seeing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table

from luigi_phot.synthetic import SyntheticConfig, generate_dataset
from luigi_phot.validation import constant_star_figures, load_products, target_figures
from tests.conftest import reduce_dataset

pytestmark = pytest.mark.slow

#: aperture 2" (the generated configuration's), neighbour at 3.5": 1.75 aperture radii;
#: the hot column well away from the target (the last test puts one through it)
BLENDED = SyntheticConfig(seed=61, n_frames=60, shape=(640, 640), n_stars=1500, target_isolation_arcsec=8.0,
                          target_neighbour=(3.5, 0.0), n_nights=10, compress="mixed",
                          moffat_beta=(2.2, 4.5), psf_ellipticity_max=0.15, bad_column=120)


def _reduce(red: Path) -> None:
    done = reduce_dataset(red, "--workers", "2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def blended(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("crowded")
    subtracted = root / "subtracted" / "ip"
    generate_dataset(subtracted, BLENDED)
    plain = root / "plain" / "ip"
    shutil.copytree(subtracted, plain)
    cfg_path = plain / "reduction_config.yaml"
    data = yaml.safe_load(cfg_path.read_text())
    data["photometry"]["subtract_neighbours"] = False
    cfg_path.write_text(yaml.safe_dump(data))
    _reduce(subtracted)
    _reduce(plain)
    return subtracted, plain


def test_the_configuration_places_the_neighbour_at_1_75_aperture_radii(blended):
    subtracted, _ = blended
    cfg = yaml.safe_load((subtracted / "reduction_config.yaml").read_text())
    stars = Table.read(subtracted / "synthetic_stars.ecsv", format="ascii.ecsv")
    target = stars[np.asarray(stars["is_target"])][0]
    neighbour = stars[np.asarray(stars["is_neighbour"])][0]
    sep = np.hypot((neighbour["ra_deg"] - target["ra_deg"]) * np.cos(np.radians(target["dec_deg"])),
                   neighbour["dec_deg"] - target["dec_deg"]) * 3600
    assert 1.5 <= sep / cfg["photometry"]["aperture_arcsec"] <= 2.0
    assert neighbour["flux_e_per_s"] == pytest.approx(target["flux_e_per_s"], rel=0.01)


def test_subtracted_target_is_at_the_noise_limit_and_plain_apertures_are_not(blended):
    subtracted, plain = blended
    lc, _, truth, _ = load_products(subtracted)
    lc_plain, _, _, _ = load_products(plain)
    sub = target_figures(lc, truth)
    ctl = target_figures(lc_plain, truth)
    print("subtracted", sub.as_dict())
    print("plain     ", ctl.as_dict())
    assert sub.flagged_fraction <= 0.1, sub
    assert sub.std_norm_resid <= 1.5, sub
    assert abs(sub.corr_with_fwhm) < 0.3, sub
    # the control: plain apertures on the same frames follow the seeing
    assert ctl.std_norm_resid >= 2 * sub.std_norm_resid and ctl.corr_with_fwhm > 0.5, ctl


def test_the_subtracted_light_follows_the_seeing(blended):
    """What was taken out of the target's aperture is the neighbour's light, which
    grows as the seeing worsens."""
    subtracted, _ = blended
    lc, _, _, _ = load_products(subtracted)
    neighbour = np.asarray(lc["neighbour_flux"], float)
    fwhm = np.asarray(lc["fwhm_arcsec"], float)
    assert np.all(neighbour > 0)
    assert np.corrcoef(neighbour, fwhm)[0, 1] > 0.8


def test_constant_stars_stay_at_the_predicted_scatter(blended):
    subtracted, _ = blended
    _, all_stars, _, stars = load_products(subtracted)
    bins = constant_star_figures(all_stars, stars, n_bins=3)
    print(bins)
    for b in bins:
        assert 0.8 <= b["median_rms_ratio"] <= 1.2, bins


def test_psf_and_mode_are_recorded(blended):
    subtracted, plain = blended
    lc, all_stars, _, _ = load_products(subtracted)
    lc_plain, _, _, _ = load_products(plain)
    assert lc.meta["neighbour_subtraction"] is True and lc_plain.meta["neighbour_subtraction"] is False
    log = (subtracted / "aperture_pipeline.log").read_text()
    assert "neighbours subtracted" in log
    assert "plain apertures" in (plain / "aperture_pipeline.log").read_text()
    phot = next((subtracted / "photometry" / "frames").glob("*/*.phot.fits"))
    header = fits.getheader(phot, "PHOT")
    for key in ("PSFFWHM", "PSFELL", "PSFBETA", "PSFCHI2", "FWHMAS"):
        assert key in header, key
    frames = Table(fits.getdata(all_stars, "FRAMES"))
    assert np.all(np.isfinite(frames["fwhm_arcsec"]))


def test_a_hot_column_through_the_target_on_the_reference_does_not_move_its_position(tmp_path):
    """The catalogue positions are every frame's forced-aperture positions. With the
    reference forced to the frame whose hot column runs closest to the blended target,
    the target is still placed where it truly is (a centroid pulled by the column, or
    left on its peak pixel, puts it a pixel off and the light curve then follows the seeing)."""
    from luigi_phot.config import load_reduction_config
    from luigi_phot.photometry.catalogue import build_catalogue
    from luigi_phot.photometry.frames import load_frame

    red = tmp_path / "ip"
    cfg_syn = SyntheticConfig(seed=61, n_frames=12, shape=(640, 640), n_stars=1500, target_isolation_arcsec=8.0,
                              target_neighbour=(3.5, 0.0), n_nights=3, bad_column=307)
    generate_dataset(red, cfg_syn)
    truth = Table.read(red / "synthetic_truth.ecsv", format="ascii.ecsv")
    k = int(np.argmin(np.abs(np.asarray(truth["target_x_pix"]) - 307)))
    assert abs(truth["target_x_pix"][k] - 307) < 2.0     # the column crosses the target's core
    cfg = load_reduction_config(red / "reduction_config.yaml")
    frame = load_frame(red / str(truth["image"][k]), cfg.camera)
    cat = build_catalogue(frame, cfg.target.ra_deg, cfg.target.dec_deg, cfg.photometry, key="test")
    target = cat.stars[cat.target_index]
    offset = np.hypot(target["x_ref"] - truth["target_x_pix"][k], target["y_ref"] - truth["target_y_pix"][k])
    assert offset <= 0.15, (float(offset), truth["image"][k])
