"""Frames as small cameras write them: plain FITS in ADU with no mask, half of them
without a WCS, every third turned by 180 degrees (a meridian flip), hot pixels, a
hot column, cosmic rays and saturated stars left in the pixels, unflagged.

- the seeing measured on star-shaped peaks only is within 10% of the truth, and no
  defect counts as a star;
- the automatic reference's true seeing is no worse than the median frame's, and the
  log says its FWHM, sky and why;
- end to end with the real `luigi` command: at least 95% of the frames in the light
  curve, the target's normalised residuals at the noise, every frame's fwhm_arcsec
  within 10% of the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from luigi_phot.config import load_reduction_config
from luigi_phot.photometry.background import sky_mesh
from luigi_phot.photometry.catalogue import choose_reference
from luigi_phot.photometry.detection import star_peaks
from luigi_phot.photometry.frames import list_frames, load_frame
from luigi_phot.synthetic import SyntheticConfig, generate_dataset
from luigi_phot.validation import load_products, target_figures
from tests.conftest import reduce_dataset

#: 640x640 at 0.389"/px, seeing 1-5" (FWHM 2.6-13 px), defects unflagged
PLAIN = SyntheticConfig(seed=1212, n_frames=12, shape=(640, 640), n_stars=1200, n_nights=5,
                        seeing_arcsec=(1.0, 5.0), target_isolation_arcsec=6.0, bad_column=200,
                        n_hot_pixels=40, cosmic_rays_per_mpix_per_s=0.3, n_saturated=6,
                        plain_fits_adu=True, no_wcs_fraction=0.5, flip_every=3)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    red = tmp_path_factory.mktemp("plain") / "ip"
    generate_dataset(red, PLAIN)
    return red


def test_the_generator_writes_plain_frames_half_without_wcs_every_third_flipped(plain):
    from astropy.io import fits

    truth = Table.read(plain / "synthetic_truth.ecsv", format="ascii.ecsv")
    assert int(np.sum(~truth["has_header_wcs"])) == 6 and int(np.sum(truth["flipped"])) == 4
    for row in truth:
        with fits.open(plain / str(row["image"])) as h:
            assert len(h) == 1 and h[0].header["BUNIT"] == "ADU" and "SATURATE" not in h[0].header
            assert ("CTYPE1" in h[0].header) == bool(row["has_header_wcs"])
    assert np.all(np.abs(np.abs(truth["rotation_deg"][truth["flipped"]]) - 180) < 1)


def test_seeing_on_star_shaped_peaks_is_within_ten_percent_and_defects_are_not_stars(plain):
    truth = Table.read(plain / "synthetic_truth.ecsv", format="ascii.ecsv")
    ratios = []
    for row in truth:
        frame = load_frame(plain / str(row["image"]))
        mesh = sky_mesh(frame.data_e, frame.pixel_flags, box=128)
        stars, fwhm = star_peaks(frame.data_e, frame.pixel_flags, mesh, nsigma=8.0, max_stars=1500)
        ratios.append(fwhm / row["fwhm_pix"])
        assert not np.any(stars.x == PLAIN.bad_column), "the hot column counted as stars"
        top = frame.data_e.max()
        assert not np.any(frame.data_e[stars.y, stars.x] >= 0.99 * top), "a saturated core counted as a star"
    ratios = np.array(ratios)
    print(np.round(ratios, 3))
    assert np.all(np.abs(ratios - 1) <= 0.10), ratios


def test_the_automatic_reference_has_no_worse_than_median_seeing_and_says_why(plain):
    rc = load_reduction_config(plain / "reduction_config.yaml", check_tom_file=False)
    choice = choose_reference(list_frames(plain), rc.camera, rc.target.ra_deg, rc.target.dec_deg)
    truth = Table.read(plain / "synthetic_truth.ecsv", format="ascii.ecsv")
    seeing = {str(r["image"]): float(r["seeing_arcsec"]) for r in truth}
    assert seeing[choice.path.name] <= np.median(list(seeing.values())), (choice.reason, seeing)
    reason = choice.reason
    assert "FWHM" in reason and "sky" in reason and "median" in reason, reason
    said = float(reason.split("FWHM ")[1].split('"')[0])
    assert abs(said / seeing[choice.path.name] - 1) <= 0.10, (said, seeing[choice.path.name])


@pytest.mark.slow
def test_plain_frames_without_wcs_and_flipped_reach_the_light_curve(plain, tmp_path):
    import shutil

    red = tmp_path / "ip"
    shutil.copytree(plain, red)
    done = reduce_dataset(red, "--workers", "2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lc, _, truth, _ = load_products(red)
    assert len(lc) >= 0.95 * len(truth), (len(lc), (red / "aperture_pipeline.log").read_text()[-3000:])
    fig = target_figures(lc, truth)
    print(fig.as_dict())
    assert fig.std_norm_resid <= 1.25 and fig.flagged_fraction <= 0.05, fig
    seeing = {str(r["image"]): float(r["seeing_arcsec"]) for r in truth}
    ratio = np.array([f / seeing[str(i)] for f, i in zip(lc["fwhm_arcsec"], lc["image"])])
    assert np.all(np.abs(ratio - 1) <= 0.10), np.round(ratio, 3)
    log = (red / "aperture_pipeline.log").read_text()
    flipped = set(map(str, truth["image"][truth["flipped"] & ~truth["has_header_wcs"]]))
    assert flipped and all(name in set(map(str, lc["image"])) for name in flipped)
    assert "sky" in log.split("reference frame")[1].split("\n")[0]


#: undersampled: 1.6"/px, seeing 1.5-3" (FWHM 0.94-1.9 px), defects unflagged
UNDERSAMPLED = SyntheticConfig(seed=1213, n_frames=6, shape=(512, 512), n_stars=700, n_nights=3,
                               pixel_scale_arcsec=1.6, seeing_arcsec=(1.5, 3.0), n_hot_pixels=40,
                               cosmic_rays_per_mpix_per_s=0.3, plain_fits_adu=True, no_wcs_fraction=0.5,
                               flip_every=3, target_isolation_arcsec=8.0)


def test_undersampled_seeing_within_ten_percent_and_every_star_peak_a_star(tmp_path):
    """Stars as sharp as hot pixels: single pixels are told from stars by the light on
    their neighbours, and the seeing comes from a profile integrated over the pixels."""
    from luigi_phot.synthetic import true_frame_wcs

    red = tmp_path / "ip"
    generate_dataset(red, UNDERSAMPLED)
    truth = Table.read(red / "synthetic_truth.ecsv", format="ascii.ecsv")
    sky = Table.read(red / "synthetic_stars.ecsv", format="ascii.ecsv")
    for row in truth:
        frame = load_frame(red / str(row["image"]))
        mesh = sky_mesh(frame.data_e, frame.pixel_flags, box=128)
        stars, fwhm = star_peaks(frame.data_e, frame.pixel_flags, mesh, nsigma=8.0, max_stars=1500)
        assert abs(fwhm / row["fwhm_pix"] - 1) <= 0.10, (row["image"], fwhm, row["fwhm_pix"])
        x, y = true_frame_wcs(truth, str(row["image"])).all_world2pix(sky["ra_deg"], sky["dec_deg"], 0)
        d = np.hypot(stars.x[:, None] - x[None, :], stars.y[:, None] - y[None, :]).min(axis=1)
        assert len(stars) > 100 and np.mean(d <= 1.5) >= 0.98, (row["image"], len(stars), np.mean(d <= 1.5))


def test_a_reference_without_wcs_borrows_one_from_a_frame_that_has_one(plain, tmp_path):
    """The frame the choice prefers, its WCS taken away, still wins: its WCS comes from
    the best frame with one through their star patterns, within that frame's own header
    error of the truth."""
    import shutil

    from astropy.io import fits

    from luigi_phot.synthetic import true_frame_wcs

    red = tmp_path / "ip"
    shutil.copytree(plain, red)
    rc = load_reduction_config(red / "reduction_config.yaml", check_tom_file=False)
    best = choose_reference(list_frames(red), rc.camera, rc.target.ra_deg, rc.target.dec_deg).path.name
    with fits.open(red / best) as h:
        hdu = h[0].copy()
    for key in [k for k in hdu.header if k.startswith(("CTYPE", "CRVAL", "CRPIX", "CD1_", "CD2_", "CUNIT"))]:
        del hdu.header[key]
    (red / best).unlink()
    hdu.writeto(red / best)
    choice = choose_reference(list_frames(red), rc.camera, rc.target.ra_deg, rc.target.dec_deg)
    assert choice.path.name == best and "has no WCS: borrowed from" in choice.reason, choice.reason
    frame = choice.load(rc.camera)
    true = true_frame_wcs(Table.read(red / "synthetic_truth.ecsv", format="ascii.ecsv"), best)
    target = [[rc.target.ra_deg, rc.target.dec_deg]]
    off_pix = np.hypot(*(frame.info.wcs.all_world2pix(target, 0)[0] - true.all_world2pix(target, 0)[0]))
    assert off_pix * PLAIN.pixel_scale_arcsec <= PLAIN.wcs_error_arcsec + 0.3, off_pix
