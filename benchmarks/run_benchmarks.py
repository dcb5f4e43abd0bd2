#!/usr/bin/env python
"""Performance benchmarks of luigi_phot (issue: fast on real-sized frames).

Each case generates its inputs once (cached in benchmarks/cache/), runs, and
the run prints one table and writes benchmarks/results/latest.json:

  measure_4k    MeasureImage, the whole task (read, sky, detection, alignment,
                photometry, write), on 4096x4096 frames with 20,000 catalogue
                stars, each in a fresh process (peak memory = its max RSS);
                beside it the floor: reading the frame and one median over it.
  measure_qhy   the same on 9600x6400 frames with 50,000 stars.
  lightcurve    BuildLightcurve for 500 frames x 20,000 stars (measurement files
                made from the 4k catalogue), in a fresh process.
  noop          a no-op rerun of a finished 500-frame dataset (the luigi command).
  e2e           a 100-frame 4k dataset reduced with --workers 2: wall time beside
                the sum of its per-frame MeasureImage times.

    python benchmarks/run_benchmarks.py [--cases measure_4k,noop] [--frames N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / "cache"
RESULTS = HERE / "results"
LUIGI = Path(sys.executable).parent / "luigi"


# --------------------------------------------------------------------------- inputs


def _config(red: Path, **photometry) -> None:
    path = red / "reduction_config.yaml"
    data = yaml.safe_load(path.read_text())
    data["photometry"].update(photometry)
    path.write_text(yaml.safe_dump(data))


def dataset(name: str, cfg, max_catalogue_stars: int | None = None) -> Path:
    """Generate (once) a synthetic dataset in the cache."""
    from luigi_phot.synthetic import generate_dataset

    red = CACHE / name / "ip"
    marker = red.parent / "complete"
    if not marker.exists():
        if red.parent.exists():
            shutil.rmtree(red.parent)
        red.parent.mkdir(parents=True)
        t0 = time.perf_counter()
        print(f"  generating {name} ...", flush=True)
        generate_dataset(red, cfg)
        if max_catalogue_stars:
            _config(red, max_catalogue_stars=max_catalogue_stars)
        marker.write_text(f"{time.perf_counter() - t0:.1f} s\n")
    return red


def _catalogue(red: Path) -> None:
    """Build the dataset's catalogue with the BuildCatalogue task itself (once)."""
    from luigi_phot import dataset_lock as lock
    from luigi_phot.tasks.catalogue import BuildCatalogue

    task = BuildCatalogue(red_dir=str(red), run_id="benchmark-catalogue")
    if task.complete():
        return
    lock.acquire(red, "benchmark-catalogue")
    try:
        t0 = time.perf_counter()
        task.run()
        print(f"  catalogue of {red.parent.name} built in {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        lock.release(red, "benchmark-catalogue")


# --------------------------------------------------------------------------- child processes


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss, which
    Linux carries over fork and exec from the parent (the generator of a big dataset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_floor(red: str, image: str) -> None:
    """In a fresh process: the floor, reading the frame's science image and one median
    over its pixels; the best of three, the first of which also warms the page cache
    for the measurement that follows in its own process."""
    from astropy.io import fits

    path = Path(red) / image
    floors = []
    for _ in range(3):
        t0 = time.perf_counter()
        with fits.open(path, memmap=False) as hdul:
            sci = hdul["SCI"].data.astype(np.float32)
        float(np.median(sci))
        floors.append(time.perf_counter() - t0)
        del sci
    print(json.dumps({"floor_s": min(floors)}))


def child_measure(red: str, image: str) -> None:
    """In a fresh process: warm up as a Luigi worker would, then time the whole
    MeasureImage task on one frame; print JSON with its time and peak memory."""
    from luigi_phot import dataset_lock as lock
    from luigi_phot.tasks.measure import MeasureImage
    from luigi_phot.tasks.reduce import preload_science

    red = Path(red)
    preload_science()
    rss_before = _peak_rss_mb()
    run_id = f"benchmark-{os.getpid()}"
    lock.acquire(red, run_id)
    try:
        task = MeasureImage(red_dir=str(red), run_id=run_id, image=image)
        out = Path(task.output().path)
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        task.run()
        whole = time.perf_counter() - t0
    finally:
        lock.release(red, run_id)
    log = (red / "aperture_pipeline.log").read_text().splitlines()
    steps = next((ln.split("; ", 1)[1].rstrip(")") for ln in reversed(log)
                  if run_id in ln and f"{image}: measured" in ln and "; " in ln), "")
    print(json.dumps({"measure_s": whole,
                      "peak_rss_mb": _peak_rss_mb(),
                      "rss_before_mb": rss_before, "steps": steps}))


def time_lightcurve_build(red: Path, preload: bool = False) -> tuple[float, int]:
    """(seconds, frames) of BuildLightcurve's build step on the dataset's current frames,
    in this process (`preload`: after importing the science stack as a reduction's
    stages have, ``tasks.reduce.preload_science``)."""
    from luigi_phot import dataset_lock as lock
    from luigi_phot.dataset import frame_identities
    from luigi_phot.tasks.lightcurve import BuildLightcurve
    from luigi_phot.tasks.measure import MeasureImage
    from luigi_phot.tasks.reduce import preload_science

    run_id = f"benchmark-{os.getpid()}"
    lock.acquire(red, run_id)
    try:
        if preload:
            preload_science()
        task = BuildLightcurve(red_dir=str(red), run_id=run_id)
        names = [f.name for f in frame_identities(red)]
        paths = [Path(MeasureImage(red_dir=str(red), run_id=run_id, image=n).output().path) for n in names]
        t0 = time.perf_counter()
        task._build(paths)
        return time.perf_counter() - t0, len(paths)
    finally:
        lock.release(red, run_id)


def child_lightcurve(red: str) -> None:
    seconds, _ = time_lightcurve_build(Path(red))
    print(json.dumps({"seconds": seconds, "peak_rss_mb": _peak_rss_mb()}))


def _child(*args) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- cases


def case_measure(name: str, cfg, max_stars: int, n_frames: int) -> dict:
    red = dataset(name, cfg, max_catalogue_stars=max_stars)
    _catalogue(red)
    from luigi_phot.photometry.catalogue import Catalogue
    from luigi_phot.dataset import catalogue_path

    n_stars = len(Catalogue.load(catalogue_path(red)).stars)
    frames = sorted(p.name for p in red.iterdir() if p.name.endswith(".fits"))[:n_frames]
    runs = [{**_child("floor", red, f), **_child("measure", red, f)} for f in frames]
    med = statistics.median(r["measure_s"] for r in runs)
    floor = statistics.median(r["floor_s"] for r in runs)
    return {"case": name, "shape": list(cfg.shape), "catalogue_stars": n_stars, "frames_timed": len(runs),
            "measure_median_s": med, "measure_all_s": [round(r["measure_s"], 3) for r in runs],
            "floor_median_s": floor, "ratio_to_floor": med / floor,
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs), "steps_last": runs[-1]["steps"]}


def case_measure_plain(n_frames: int) -> dict:
    """The 4k frames measured without neighbour subtraction (plain apertures): the same
    frames (linked) and catalogue, another configuration."""
    from luigi_phot.dataset import catalogue_path

    src = dataset("measure_4k", CONFIG_4K, max_catalogue_stars=20000)
    _catalogue(src)
    red = CACHE / "measure_4k_plain" / "ip"
    if not (red / "reduction_config.yaml").exists():
        red.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.fits"):
            (red / f.name).symlink_to(f)
        shutil.copy(src / "reduction_config.yaml", red)
        _config(red, subtract_neighbours=False)
        catalogue_path(red).parent.mkdir(exist_ok=True)
        shutil.copy2(catalogue_path(src), catalogue_path(red))
    frames = sorted(p.name for p in red.iterdir() if p.name.endswith(".fits"))[:n_frames]
    runs = [{**_child("floor", red, f), **_child("measure", red, f)} for f in frames]
    med = statistics.median(r["measure_s"] for r in runs)
    floor = statistics.median(r["floor_s"] for r in runs)
    return {"case": "measure_4k_plain", "shape": list(CONFIG_4K.shape), "catalogue_stars": 20000,
            "frames_timed": len(runs), "measure_median_s": med, "measure_all_s": [round(r["measure_s"], 3) for r in runs],
            "floor_median_s": floor, "ratio_to_floor": med / floor,
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs), "steps_last": runs[-1]["steps"]}


def case_lightcurve(n_frames: int = 500) -> dict:
    """500 measurement files made from the 4k catalogue: realistic sizes and flags."""
    from astropy.io import fits

    from luigi_phot.dataset import catalogue_path, measurement_dir
    from luigi_phot.photometry.catalogue import Catalogue
    from luigi_phot.tasks.base import load_config
    from luigi_phot.dataset import measurement_key

    src = dataset("measure_4k", CONFIG_4K, max_catalogue_stars=20000)
    _catalogue(src)
    red = CACHE / f"lightcurve_{n_frames}" / "ip"
    marker = red.parent / "complete-v2"   # v2: measurement files named by frame digest
    if not marker.exists():
        print(f"  making {n_frames} measurement files ...", flush=True)
        if red.parent.exists():
            shutil.rmtree(red.parent)
        red.mkdir(parents=True)
        shutil.copy(src / "reduction_config.yaml", red)
        (red / "photometry").mkdir()
        shutil.copy(catalogue_path(src), catalogue_path(red))
        cat = Catalogue.load(catalogue_path(red))
        key = measurement_key(red, load_config(red))
        out = measurement_dir(red, key)
        out.mkdir(parents=True)
        rng = np.random.default_rng(8)
        flux_ref = np.nan_to_num(np.asarray(cat.stars["flux_ref"], float), nan=100.0).clip(10)
        template = next(src.glob("*.fits"))
        hdr0 = fits.getheader(template, "SCI")
        for k in range(n_frames):
            write_stand_in_measurement(red, key, cat, hdr0, flux_ref, rng, k)
        marker.write_text("ok\n")
    r = _child("lightcurve", red)
    return {"case": "lightcurve", "frames": n_frames, "stars": 20000, "seconds": r["seconds"],
            "peak_rss_mb": r["peak_rss_mb"]}


def write_stand_in_measurement(red: Path, key: str, cat, hdr0, flux_ref: np.ndarray, rng, k: int) -> str:
    """Frame k of a light-curve benchmark: a tiny stand-in frame file (only its name and
    time are used) and its measurement file, made from the catalogue's reference fluxes
    with a transparency, photon noise and a few flagged points. Returns the frame's name."""
    from astropy.io import fits

    from luigi_phot.dataset import frame_identity, measurement_path
    from luigi_phot.photometry.lightcurve import write_measurement

    name = f"frame-{k:04d}.fits"
    h = hdr0.copy()
    h["MJD-OBS"] = 61000.0 + k * 0.01
    h.remove("DATE-OBS", ignore_missing=True)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((8, 8), np.float32), h, name="SCI")]).writeto(red / name)
    scale = rng.uniform(0.6, 1.0)
    flux = flux_ref * scale * 0.8 * rng.normal(1, 0.002, flux_ref.size)
    err = np.sqrt(flux + 82 * 800.0)
    flux = flux + rng.normal(0, 1, flux.size) * err
    cols = {"x": cat.stars["x_ref"].astype(np.float32), "y": cat.stars["y_ref"].astype(np.float32),
            "flux": flux.astype(np.float32), "flux_err": err.astype(np.float32),
            "sky": np.full(flux.size, 800, np.float32), "sky_sigma": np.full(flux.size, 30, np.float32),
            "n_sky": np.full(flux.size, 400, np.int16), "neighbour_flux": np.zeros(flux.size, np.float32),
            "flags": (rng.random(flux.size) < 0.01).astype(np.int16) * 4}
    header = {"IMAGE": name, "MJDMID": 61000.0 + k * 0.01, "EXPTIME": 120.0, "FILTER": cat.filter_name,
              "AIRMASS": 1.2, "FWHMAS": 1.5, "SKY_E": 800.0, "SITELAT": -30.17, "SITELON": -70.80,
              "SITEALT": 2198.0, "ALN_RMS": 0.03, "ALN_N": 300, "CATID": cat.catalogue_id}
    digest = frame_identity(red, name).digest
    header["FRAMEDIG"] = digest
    write_measurement(measurement_path(red, key, name, digest), cols, header)
    return name


def case_noop(n_frames: int = 500) -> dict:
    from luigi_phot.synthetic import SyntheticConfig

    cfg = SyntheticConfig(seed=21, n_frames=n_frames, shape=(160, 160), n_stars=150, n_nights=20,
                          seeing_arcsec=(1.0, 1.8), bad_column=None, n_saturated=0, n_variables=1)
    red = dataset(f"noop_{n_frames}", cfg)
    if not (red / "reduction_record.json").exists():
        print(f"  first reduction of the {n_frames}-frame dataset ...", flush=True)
        done = subprocess.run([str(LUIGI), "--module", "luigi_phot", "ReduceDataset", "--red-dir", str(red),
                               "--local-scheduler", "--workers", "2"], capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        done = subprocess.run([str(LUIGI), "--module", "luigi_phot", "ReduceDataset", "--red-dir", str(red),
                               "--local-scheduler"], capture_output=True, text=True, cwd=REPO)
        times.append(time.perf_counter() - t0)
        assert done.returncode == 0 and "complete ones were encountered" in done.stderr + done.stdout
    return {"case": "noop", "frames": n_frames, "seconds_median": statistics.median(times),
            "seconds_all": [round(t, 2) for t in times]}


def case_e2e(n_frames: int = 100) -> dict:
    cfg = dataclasses.replace(CONFIG_4K, seed=44, n_frames=n_frames, n_nights=6)
    red = dataset(f"e2e_{n_frames}", cfg, max_catalogue_stars=20000)
    for p in ("photometry", "reduction_record.json", "upload_record.json"):
        target = red / p
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    log = red / "aperture_pipeline.log"
    start = log.stat().st_size if log.exists() else 0
    t0 = time.perf_counter()
    done = subprocess.run([str(LUIGI), "--module", "luigi_phot", "ReduceDataset", "--red-dir", str(red),
                           "--local-scheduler", "--workers", "2"], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    text = log.read_text()[start:]
    per_frame = [float(m) for m in re.findall(r"measured \d+ stars in ([0-9.]+) s", text)]
    catalogue = re.search(r"catalogue of \d+ stars .* built in ([0-9.]+) s", text)
    lc = re.search(r"written in ([0-9.]+) s", text)
    return {"case": "e2e", "frames": n_frames, "workers": 2, "wall_s": wall, "sum_measure_s": sum(per_frame),
            "median_measure_s": statistics.median(per_frame) if per_frame else None,
            "catalogue_s": float(catalogue.group(1)) if catalogue else None,
            "lightcurve_s": float(lc.group(1)) if lc else None}


def machine() -> dict:
    """The machine and the package versions the figures were measured with."""
    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import astropy
    import luigi
    import photutils
    import scipy

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "astropy": astropy.__version__, "photutils": photutils.__version__,
            "luigi": luigi.__version__, "load_average_1min": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%d %H:%M")}

def _synthetic():
    from luigi_phot.synthetic import SyntheticConfig

    return SyntheticConfig


def _configs():
    S = _synthetic()
    c4k = S(seed=5, n_frames=6, shape=(4096, 4096), n_stars=45000, n_nights=2, compress="none")
    cqhy = S(seed=6, n_frames=3, shape=(6400, 9600), n_stars=110000, n_nights=1, compress="none",
             pixel_scale_arcsec=0.6)
    return c4k, cqhy


def main(argv=None) -> int:
    global CONFIG_4K
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="measure_4k,measure_4k_plain,measure_qhy,lightcurve,noop,e2e")
    ap.add_argument("--frames", type=int, default=5, help="frames timed per measure case")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        {"floor": child_floor, "measure": child_measure, "lightcurve": child_lightcurve}[kind](*rest)
        return 0
    CONFIG_4K, CONFIG_QHY = _configs()
    CACHE.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = []
    for case in args.cases.split(","):
        print(f"[{case}]", flush=True)
        if case == "measure_4k":
            results.append(case_measure("measure_4k", CONFIG_4K, 20000, args.frames))
        elif case == "measure_4k_plain":
            results.append(case_measure_plain(args.frames))
        elif case == "measure_qhy":
            results.append(case_measure("measure_qhy", CONFIG_QHY, 50000, min(args.frames, 3)))
        elif case == "lightcurve":
            results.append(case_lightcurve())
        elif case == "noop":
            results.append(case_noop())
        elif case == "e2e":
            results.append(case_e2e())
        print(json.dumps(results[-1]), flush=True)
    facts = machine()
    print()
    print(f"Machine: {facts['cpu']}, {facts['cores']} cores; Python {facts['python']}, "
          f"photutils {facts['photutils']}, astropy {facts['astropy']}, luigi {facts['luigi']}; {facts['date']}")
    print("| case | figure | target |")
    print("|---|---|---|")
    for r in results:
        if r["case"].startswith("measure"):
            target = {"measure_4k": "1.5 s, 1 GB", "measure_4k_plain": "(subtraction <= 1.5x this)"}.get(
                r["case"], "4 s, 2.5 GB")
            mode = ", plain apertures" if r["case"].endswith("plain") else ""
            print(f"| MeasureImage {r['shape'][1]}x{r['shape'][0]}, {r['catalogue_stars']} stars{mode} | median "
                  f"{r['measure_median_s']:.2f} s over {r['frames_timed']} frames; floor (read + median) "
                  f"{r['floor_median_s']:.2f} s, ratio {r['ratio_to_floor']:.1f}; peak RSS "
                  f"{r['peak_rss_mb_max']:.0f} MB | {target}, <= 5x floor |")
        elif r["case"] == "lightcurve":
            print(f"| BuildLightcurve {r['frames']} frames x {r['stars']} stars | {r['seconds']:.1f} s, peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB | 30 s, 4 GB |")
        elif r["case"] == "noop":
            print(f"| no-op rerun, {r['frames']}-frame dataset | {r['seconds_median']:.2f} s (luigi command) | 5 s |")
        elif r["case"] == "e2e":
            print(f"| 100 frames 4k, 2 workers | wall {r['wall_s']:.0f} s; sum of MeasureImage {r['sum_measure_s']:.0f} s "
                  f"(median {r['median_measure_s']:.2f} s); catalogue {r['catalogue_s']} s; light curve "
                  f"{r['lightcurve_s']} s | reported |")
    (RESULTS / "latest.json").write_text(json.dumps({"machine": facts, "results": results}, indent=1))
    return 0


CONFIG_4K = None

if __name__ == "__main__":
    sys.exit(main())
