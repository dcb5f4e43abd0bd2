"""The measurement cache behind an incremental light curve: one new frame costs one
measurement file read, and the light curve equals the one built from every file.
(benchmarks/lightcurve_increment.py times it at 500 frames.)"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

import numpy as np

from luigi_phot.config import load_reduction_config
from luigi_phot.dataset import catalogue_path
from luigi_phot.photometry.catalogue import Catalogue
from luigi_phot.photometry.lightcurve import build_lightcurve, read_measurement
from luigi_phot.photometry.measurement_cache import LIGHTCURVE_COLUMNS, read_measurements
from luigi_phot.tasks.measure import MeasureImage
from luigi_phot.photometry.frames import list_frames


def _measurements(red: Path) -> list[Path]:
    return [Path(MeasureImage(red_dir=str(red), run_id="test", image=p.name).output().path) for p in list_frames(red)]


def _lightcurve(red: Path, records):
    cfg = load_reduction_config(red / "reduction_config.yaml")
    cat = Catalogue.load(catalogue_path(red))
    return build_lightcurve(records, cat, cfg.target.name, cfg.target.ra_deg, cfg.target.dec_deg,
                            cfg.photometry.default_zero_point)


def _mapped(array) -> bool:
    """Whether `array` views a file mapped into memory."""
    while array is not None:
        if isinstance(array, (np.memmap, mmap.mmap)):
            return True
        array = getattr(array, "base", None)
    return False


def _same_table(a, b) -> bool:
    return a.colnames == b.colnames and len(a) == len(b) and all(
        np.array_equal(np.asarray(a[c]), np.asarray(b[c]), equal_nan=a[c].dtype.kind == "f") for c in a.colnames)


def test_one_new_frame_reads_one_file_and_the_light_curve_equals_a_full_rebuild(reduced_dataset, tmp_path):
    paths = _measurements(reduced_dataset)
    assert len(paths) >= 10 and all(p.is_file() for p in paths)
    cache = tmp_path / "cache"
    _, n_read = read_measurements(paths[:-1], cache)
    assert n_read == len(paths) - 1
    incremental, n_read = read_measurements(paths, cache)
    assert n_read == 1, "the frames read before came again from their files"
    full = [read_measurement(p, columns=LIGHTCURVE_COLUMNS) for p in paths]
    assert [r.image for r in incremental] == [r.image for r in full]
    # the typed view of each header too (repr: NaN facts compare unequal to themselves)
    assert [repr(r.facts) for r in incremental] == [repr(r.facts) for r in full]
    assert all(r.facts.image == r.image and r.facts.mjd_mid > 0 for r in full if r.rejected is None)
    inc, ref = _lightcurve(reduced_dataset, incremental), _lightcurve(reduced_dataset, full)
    assert _same_table(inc.lightcurve, ref.lightcurve)
    assert _same_table(inc.stars, ref.stars)
    assert np.array_equal(inc.flux, ref.flux, equal_nan=True)
    assert len(inc.lightcurve) == len(paths)


def test_a_changed_measurement_is_read_again_and_a_damaged_cache_ignored(reduced_dataset, tmp_path):
    paths = _measurements(reduced_dataset)
    cache = tmp_path / "cache"
    read_measurements(paths, cache)
    st = paths[3].stat()
    os.utime(paths[3], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    _, n_read = read_measurements(paths, cache)
    assert n_read == 1
    for k in range(12):                      # many increments: the blocks are merged, nothing lost
        os.utime(paths[k], ns=(st.st_atime_ns, st.st_mtime_ns + (k + 2) * 1_000_000_000))
        read_measurements(paths, cache)
    assert len(list(cache.glob("block-*.npz"))) <= 8
    listed = json.loads((cache / "index.json").read_text())["blocks"]
    parts = (".npz", *(f".{c}.npy" for c in LIGHTCURVE_COLUMNS))
    assert {f.name for f in cache.iterdir()} == {"index.json"} | {
        f"{b.removesuffix('.npz')}{part}" for b in listed for part in parts}
    records, n_read = read_measurements(paths, cache)
    assert n_read == 0
    (cache / "index.json").write_text("{not json")
    again, n_read = read_measurements(paths, cache)
    assert n_read == len(paths)
    assert _same_table(_lightcurve(reduced_dataset, again).lightcurve, _lightcurve(reduced_dataset, records).lightcurve)


def test_the_cache_maps_its_columns_and_removes_files_it_does_not_list(reduced_dataset, tmp_path):
    paths = _measurements(reduced_dataset)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "block-0123456789ab.npz").write_bytes(b"a block of an older format")
    (cache / ".tmp-block-feedbeefcafe.npz").write_bytes(b"left by a crash")
    (cache / "notes.txt").write_text("not the cache's")
    read_measurements(paths, cache)
    assert not (cache / "block-0123456789ab.npz").exists() and not (cache / ".tmp-block-feedbeefcafe.npz").exists()
    assert (cache / "notes.txt").is_file()
    records, n_read = read_measurements(paths, cache)
    assert n_read == 0
    measured = [r for r in records if r.columns is not None]
    assert measured and all(_mapped(r.columns[c]) for r in measured for c in LIGHTCURVE_COLUMNS)
    full = [read_measurement(p, columns=LIGHTCURVE_COLUMNS) for p in paths]
    from_files = [r for r in full if r.columns is not None]
    for a, b in zip(measured, from_files):
        for c in LIGHTCURVE_COLUMNS:       # the same values and type, in native byte order
            assert np.array_equal(a.columns[c], b.columns[c], equal_nan=True)
            assert a.columns[c].dtype == b.columns[c].dtype.newbyteorder("=")
