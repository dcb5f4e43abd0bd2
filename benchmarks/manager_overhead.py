"""The reduction manager's own overhead, and its throughput, on a tree of small datasets.

    PYTHONPATH=$PWD python benchmarks/manager_overhead.py [--datasets 100] [--max-parallel 2]
                                                         [--no-full] [--luigid]

Two cases, each timed as a user runs it (``luigi --module luigi_phot ReductionManager
--config FILE``, a new process):

full    every dataset needs reducing (a fresh copy of the tree), max_parallel at once;
no-op   the same tree once reduced, groups all, date and recent: nothing to do, so
        the time is the manager's own overhead - Python and Luigi start-up, discovery,
        selection (frame dates from the reduction records), the lock and up-to-date
        checks, the run log. Target: under 0.2 s a dataset and under a minute in all.

The generated tree is cached in benchmarks/cache/ (and the reduced one, so that
``--no-full`` measures the no-op case alone in seconds). A table is printed and the
figures are written to benchmarks/results/manager_overhead_<local|luigid>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / "cache"
RESULTS = REPO / "benchmarks" / "results"
BIN = Path(sys.executable).parent
#: Bump when the generated tree changes.
TREE_VERSION = 1
FIRST_NIGHT = dt.date(2026, 3, 1)
INSTRUMENTS = ("sinistro", "qhy")
FILTERS = ("gp", "rp", "ip", "zs", "up")


def night_field_ra(night: dt.date) -> float:
    """An RA culminating near local midnight on that night (opposite the Sun), so the
    synthetic field is above the horizon when its frames are taken."""
    sun_ra = 360.0 * ((night - dt.date(2000, 3, 20)).days % 365.2422) / 365.2422
    return (sun_ra + 180.0) % 360.0


def dataset_names(n: int) -> list[str]:
    """n datasets <target>/<instrument>/<filter>, 10 per target."""
    names = []
    target = 0
    while len(names) < n:
        for inst in INSTRUMENTS:
            for filt in FILTERS:
                if len(names) < n:
                    names.append(f"BEN-{target:03d}/{inst}/{filt}")
        target += 1
    return names


def generate_tree(root: Path, n: int) -> None:
    """n small datasets (3 frames of 256x256 pixels), one night each, a night apart."""
    from luigi_phot.synthetic import SyntheticConfig, generate_dataset

    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for k, rel in enumerate(dataset_names(n)):
        night = FIRST_NIGHT + dt.timedelta(days=k)
        target, _, filt = rel.split("/")
        generate_dataset(tmp / rel, SyntheticConfig(
            seed=1000 + k, n_frames=3, shape=(256, 256), n_stars=300, bad_column=100, n_nights=1,
            first_night=night.isoformat(), field_ra_deg=night_field_ra(night), seeing_arcsec=(1.0, 1.6),
            n_saturated=1, n_variables=2, target_name=target, filter_name=filt))
    tmp.rename(root)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy keeping file times: a reduced tree stays up to date."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)


def write_config(path: Path, root: Path, log_dir: Path, selection: dict, max_parallel: int) -> Path:
    lines = [f"log_dir: '{log_dir}'", f"data_reduction_dir: '{root}'", "software_dir: 'None'",
             f"instrument_list: {list(INSTRUMENTS)}", "dataset_selection:"]
    lines += [f"  {k}: {v!r}" if isinstance(v, str) else f"  {k}: {v}" for k, v in selection.items()]
    lines.append(f"max_parallel: {max_parallel}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_manager(config: Path, scheduler_args: list[str], log_dir: Path) -> dict:
    """Run the manager command; its wall time and the summary.json it wrote."""
    before = set((log_dir / "manager_runs").glob("*/summary.json"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    done = subprocess.run([str(BIN / "luigi"), "--module", "luigi_phot", "ReductionManager", "--config",
                           str(config), *scheduler_args], cwd=config.parent, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    new = sorted(set((log_dir / "manager_runs").glob("*/summary.json")) - before)
    if done.returncode != 0 or not new:
        sys.exit(f"manager failed (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return {"wall_s": wall, "summary": json.loads(new[-1].read_text())}


def start_luigid(directory: Path) -> list[str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([str(REPO / "scripts" / "luigid.sh"), "start", "--dir", str(directory), "--port", str(port)],
                   check=True, env={**os.environ, "LUIGID": str(BIN / "luigid")})
    return ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(port)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=100)
    parser.add_argument("--max-parallel", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--no-full", action="store_true",
                        help="skip the case where every dataset needs reducing (uses the cached reduced tree)")
    parser.add_argument("--luigid", action="store_true", help="through a luigid started for the run "
                                                              "(default: --local-scheduler)")
    args = parser.parse_args(argv)

    n = args.datasets
    template = CACHE / f"manager_tree_n{n}_v{TREE_VERSION}"
    reduced = CACHE / f"manager_tree_n{n}_v{TREE_VERSION}_reduced"
    if not template.exists():
        t0 = time.perf_counter()
        print(f"generating {n} datasets in {template} ...", flush=True)
        generate_tree(template, n)
        print(f"  {time.perf_counter() - t0:.1f} s", flush=True)

    work = Path(tempfile.mkdtemp(prefix="manager_bench_", dir=CACHE))
    luigid_dir = work / "luigid"
    scheduler_args = ["--local-scheduler"]
    rows = []
    try:
        if args.luigid:
            scheduler_args = start_luigid(luigid_dir)
        root = work / "reduction"
        if args.no_full and not reduced.exists():
            sys.exit(f"no reduced tree in {reduced}: run once without --no-full")
        if not args.no_full:
            copy_tree(template, root)
            cfg = write_config(work / "all.yaml", root, work / "logs", {"group": "all"}, args.max_parallel)
            print(f"full: reducing {n} datasets, {args.max_parallel} at a time ...", flush=True)
            r = run_manager(cfg, scheduler_args, work / "logs")
            counts = r["summary"]["counts"]
            rows.append({"case": f"full, group all, max_parallel {args.max_parallel}", "selected": n,
                         "reduced": counts["reduced"], "failed": counts["failed"], "wall_s": r["wall_s"],
                         "manager_s": r["summary"]["total_s"], "per_dataset_s": r["wall_s"] / n})
            copy_tree(root, reduced.with_name(reduced.name + ".tmp"))
            shutil.rmtree(reduced, ignore_errors=True)
            reduced.with_name(reduced.name + ".tmp").rename(reduced)
        else:
            copy_tree(reduced, root)
        last_night = FIRST_NIGHT + dt.timedelta(days=n - 1)
        cases = [
            ("no-op, group all", {"group": "all"}),
            ("no-op, group date (10 nights)", {"group": "date", "start_date": str(FIRST_NIGHT + dt.timedelta(days=20)),
                                               "end_date": str(FIRST_NIGHT + dt.timedelta(days=29))}),
            ("no-op, group recent (last 10 nights)",
             {"group": "recent", "ndays": (dt.date.today() - last_night).days + 10}),
        ]
        for name, selection in cases:
            log_dir = work / "logs-noop"
            cfg = write_config(work / f"noop-{selection['group']}.yaml", root, log_dir, selection, args.max_parallel)
            r = run_manager(cfg, scheduler_args, log_dir)
            s = r["summary"]
            if s["counts"]["reduced"] or s["counts"]["failed"]:
                sys.exit(f"{name}: expected nothing to do, got {s['counts']}")
            rows.append({"case": name, "selected": len(s["outcomes"]), "reduced": 0, "failed": 0,
                         "wall_s": r["wall_s"], "manager_s": s["total_s"], "per_dataset_s": r["wall_s"] / n,
                         "headers_read": s["headers_read"]})
    finally:
        if args.luigid:
            subprocess.run([str(REPO / "scripts" / "luigid.sh"), "stop", "--dir", str(luigid_dir)],
                           env={**os.environ, "LUIGID": str(BIN / "luigid")})
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"ReductionManager on {n} datasets ({'luigid' if args.luigid else 'local scheduler'}; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}):")
    print(f"{'case':42s} {'selected':>8s} {'reduced':>7s} {'wall s':>8s} {'manager s':>9s} {'s/dataset':>9s}")
    for row in rows:
        print(f"{row['case']:42s} {row['selected']:8d} {row['reduced']:7d} {row['wall_s']:8.1f} "
              f"{row['manager_s']:9.2f} {row['per_dataset_s']:9.3f}")
    print("wall s: the whole command; manager s: ReductionManager.run (without Python/Luigi start-up); "
          f"s/dataset: wall s / {n}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"manager_overhead_{'luigid' if args.luigid else 'local'}.json"
    out.write_text(json.dumps({
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "datasets": n,
        "scheduler": "luigid" if args.luigid else "local", "max_parallel": args.max_parallel,
        "cpu_count": os.cpu_count(), "load_1min": os.getloadavg()[0], "python": platform.python_version(),
        "rows": rows}, indent=1) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
