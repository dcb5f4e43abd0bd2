"""luigi-phot-watch for a night: from a frame's landing to its point in the light curve,
and on the TOM.

    .venv/bin/python benchmarks/watch_latency.py                     # 10 datasets, 1024x1024, a frame every 15 s
    .venv/bin/python benchmarks/watch_latency.py --tom               # with TOM upload (the tests' local TOM Toolkit)
    .venv/bin/python benchmarks/watch_latency.py --arrivals 10       # a shorter night
    .venv/bin/python benchmarks/watch_latency.py --size 4096 --stars 15000 --datasets 3 --period 30 --arrivals 9
                                                                     # Sinistro-like: 4k frames, ~14,600 catalogue stars

What it does (all real: the installed luigi-phot-watch command, a local Luigi
scheduler, a TOM Toolkit server started by tests/tom_server.py with --tom):

1. generates --datasets synthetic datasets of --size x --size frames (one target
   each, named WATCH-00, ...) outside the tree, puts --initial frames of each in
   a fresh tree, starts the watcher and waits for its catch-up cycle;
2. every --period seconds lands the next frame (copied to a hidden name, then
   renamed, as rsync does) into the next dataset, round-robin, --arrivals times;
   a poller notes when each frame's point is in ``<target>_<filter>_lc.ecsv``
   and (--tom) when the TOM holds a point at that frame's time;
3. makes a new dataset in the tree (its directory and reduction_config.yaml) and
   lands its first frame: the time to that frame's point in its light curve (the
   catalogue is built first), then its second frame's;
4. writes one more frame slowly under its final name (over --slow-s seconds) and
   checks that it reaches the light curve and not the rejected list;
5. lands a frame, waits until its dataset's lock is taken (a reduction in
   progress), sends SIGTERM and measures the time to exit; checks no lock is left.

Prints the figures; the machine's load average is printed with them (timings
under load are inflated).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from luigi_phot import dataset_lock  # noqa: E402
from luigi_phot.photometry.flags import SEVERE  # noqa: E402
from luigi_phot.synthetic import SyntheticConfig, generate_dataset  # noqa: E402

WATCH = Path(sys.executable).parent / "luigi-phot-watch"


def lc_rows(red: Path) -> dict[str, tuple[float, int]]:
    """{image: (mjd, flags)} of the dataset's light curve (empty when there is none yet)."""
    from astropy.table import Table

    found = list(red.glob("*_lc.ecsv"))
    if not found:
        return {}
    try:
        t = Table.read(found[0], format="ascii.ecsv")
    except Exception:
        return {}
    return {str(r["image"]): (float(r["mjd"]), int(r["flags"])) for r in t}


def rejected(red: Path) -> set[str]:
    found = list(red.glob("*_rejected.csv"))
    if not found:
        return set()
    lines = found[0].read_text().splitlines()[1:]
    return {ln.split(",", 1)[0] for ln in lines}


class TomPoints:
    """Times (MJD) of the photometry points the TOM holds per target (token auth)."""

    def __init__(self, tom):
        import requests

        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {tom.api_token}"
        self.url = tom.url
        self.ids: dict[str, int] = {}

    def mjds(self, target: str) -> list[float]:
        from astropy.time import Time

        if target not in self.ids:
            r = self.session.get(f"{self.url}/api/targets/", params={"name": target}, timeout=30).json()
            found = [t["id"] for t in r["results"] if t["name"] == target]
            if not found:
                return []
            self.ids[target] = found[0]
        out, offset = [], 0
        while True:
            page = self.session.get(f"{self.url}/api/reduceddatums/", timeout=30, params={
                "target__id": self.ids[target], "data_type": "photometry", "limit": 500, "offset": offset}).json()
            out += [Time(d["timestamp"].replace("Z", "")).mjd for d in page["results"]]
            offset += len(page["results"])
            if not page["next"]:
                return out


def prepare(work: Path, args, account: Path | None) -> tuple[Path, Path, dict[str, list[Path]]]:
    """The tree with --initial frames per dataset, the manager configuration, and the
    frames still to land per dataset."""
    stage, root = work / "stage", work / "tree"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(work / "logs", ignore_errors=True)
    per_dataset = args.initial + -(-args.arrivals // args.datasets) + 2
    pending = {}
    for i in range(args.datasets + 1):            # the last one lands during the night (a new dataset)
        name = f"WATCH-{i:02d}/sinistro/ip"
        src = stage / name
        stars = {} if args.stars is None else {"n_stars": args.stars, "seeing_arcsec": (1.2, 2.0)}
        marker = src / f".complete-{per_dataset}-{args.size}-{args.stars}"
        if not marker.exists():
            shutil.rmtree(src, ignore_errors=True)
            generate_dataset(src, SyntheticConfig(seed=200 + i, n_frames=per_dataset, shape=(args.size, args.size),
                                                  compress="none", **stars))
            marker.write_text("ok\n")
        frames = sorted(p for p in src.iterdir() if p.name.endswith(".fits"))
        pending[name] = frames
        if i < args.datasets:
            write_config(src, root / name, i, account)
            for f in frames[:args.initial]:
                shutil.copy2(f, root / name)
            pending[name] = frames[args.initial:]
    config = work / "manager.yaml"
    config.write_text(yaml.safe_dump({
        "log_dir": str(work / "logs"), "data_reduction_dir": str(root), "software_dir": "None",
        "instrument_list": ["sinistro"], "dataset_selection": {"group": "all"}, "max_parallel": args.max_parallel}))
    return root, config, pending


def write_config(src: Path, red: Path, i: int, account: Path | None) -> None:
    """red_dir and its reduction_config.yaml (the generated one, target WATCH-<i>)."""
    red.mkdir(parents=True)
    cfg = yaml.safe_load((src / "reduction_config.yaml").read_text())
    cfg["target"]["name"] = f"WATCH-{i:02d}"
    cfg["tom"] = {"upload": account is not None, "data_label": f"WATCH-{i:02d}"}
    if account is not None:
        cfg["tom"].update(config_file=str(account), create_target=True)
    (red / "reduction_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def land(src: Path, red: Path) -> float:
    tmp = red / f".{src.name}.part"
    shutil.copy(src, tmp)
    os.replace(tmp, red / src.name)
    return time.time()


def run(args, tom=None) -> None:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    account = None
    if tom is not None:
        account = work / "tom_config.yaml"
        account.unlink(missing_ok=True)
        account.write_text(yaml.safe_dump({"url": tom.url, "api_token": tom.api_token}))
        os.chmod(account, 0o600)
    print(f"preparing {args.datasets} datasets of {args.size}x{args.size} frames ...", flush=True)
    root, config, pending = prepare(work, args, account)
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(REPO / "luigi.cfg"), "PYTHONUNBUFFERED": "1"}
    out = open(work / "watch.out", "w")
    proc = subprocess.Popen([str(WATCH), "--config", str(config), "--local-scheduler", "--interval",
                             str(args.interval), "--settle", str(args.settle)], env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log = work / "logs" / "arcon_pipeline.log"
    try:
        t0 = time.time()
        while not (log.exists() and "] cycle 1 " in log.read_text()):
            if proc.poll() is not None:
                raise SystemExit(f"the watcher exited: {(work / 'watch.out').read_text()[-2000:]}")
            time.sleep(0.5)
        print(f"catch-up of {args.datasets} datasets x {args.initial} frames: {time.time() - t0:.0f} s", flush=True)
        new_name = f"WATCH-{args.datasets:02d}/sinistro/ip"
        new_frames = pending.pop(new_name)
        lc_s, tom_s = arrivals(args, root, pending, TomPoints(tom) if tom else None)
        first_s = new_dataset(root, new_name, new_frames, args, account)
        slow = slow_copy(args, root, pending)
        stop_s, locks = sigterm(root, pending, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        out.close()
    load = os.getloadavg()
    print(f"\nluigi-phot-watch, {args.datasets} datasets, {args.size}x{args.size} frames, one every {args.period:g} s "
          f"({len(lc_s)} landed), --interval {args.interval:g} --settle {args.settle:g}, max_parallel "
          f"{args.max_parallel}, local scheduler; {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f}")
    print(f"  landing -> light curve: max {max(lc_s):.1f} s, median {statistics.median(lc_s):.1f} s "
          f"(all: {' '.join(f'{s:.0f}' for s in lc_s)})")
    if tom_s:
        print(f"  landing -> TOM:         max {max(tom_s):.1f} s, median {statistics.median(tom_s):.1f} s "
              f"({len(tom_s)} unflagged points)")
    print(f"  a new dataset: its first frame's point in its light curve after {first_s[0]:.1f} s, its second "
          f"frame's after {first_s[1]:.1f} s")
    print(f"  slowly copied frame ({args.slow_s:g} s under its final name): {slow}")
    print(f"  SIGTERM during a reduction: exit after {stop_s:.1f} s, locks left: {locks}")


def arrivals(args, root: Path, pending: dict[str, list[Path]], tom: TomPoints | None):
    names = sorted(pending)
    landed: list[tuple[str, str, float]] = []        # (dataset, frame, landing time)
    seen_lc: dict[tuple[str, str], float] = {}       # (dataset, frame): when seen (datasets share frame names)
    seen_tom: dict[tuple[str, str], float] = {}
    done = threading.Event()

    def poll():
        while not done.is_set() or len(seen_lc) < len(landed):
            for name, frame, _ in list(landed):
                red, key = root / name, (name, frame)
                if key not in seen_lc:
                    if frame in lc_rows(red):
                        seen_lc[key] = time.time()
                elif tom is not None and key not in seen_tom:
                    mjd, flags = lc_rows(red)[frame]
                    if flags & SEVERE:   # a severe flag: not uploaded
                        seen_tom[key] = float("nan")
                    elif any(abs(m - mjd) < 2e-5 for m in tom.mjds(name.split("/")[0])):
                        seen_tom[key] = time.time()
            if done.is_set() and len(seen_lc) == len(landed) and (
                    tom is None or len(seen_tom) == len(landed)):
                return
            time.sleep(0.3)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    for k in range(args.arrivals):
        name = names[k % len(names)]
        src = pending[name].pop(0)
        landed.append((name, src.name, land(src, root / name)))
        time.sleep(args.period)
    done.set()
    poller.join(timeout=300)
    lc_s = [seen_lc[(n, f)] - t for n, f, t in landed if (n, f) in seen_lc]
    tom_s = [seen_tom[(n, f)] - t for n, f, t in landed if (n, f) in seen_tom and seen_tom[(n, f)] == seen_tom[(n, f)]]
    missing = [f"{n}/{f}" for n, f, _ in landed if (n, f) not in seen_lc]
    if missing:
        print(f"  NOT in the light curve within 300 s of the last landing: {missing}")
    return lc_s, tom_s


def new_dataset(root: Path, name: str, frames: list[Path], args, account: Path | None) -> tuple[float, float]:
    """A dataset that appears in the night: its directory and configuration, then its
    first frame, then (once that frame's point is in) its second: seconds from each
    frame's landing to its point in the light curve (inf: not within 300 s)."""
    i = int(name.split("/")[0].split("-")[1])
    write_config(frames[0].parent, root / name, i, account)
    seconds = []
    for frame in frames[:2]:
        t0 = land(frame, root / name)
        while frame.name not in lc_rows(root / name) and time.time() - t0 < 300:
            time.sleep(0.3)
        seconds.append(time.time() - t0 if frame.name in lc_rows(root / name) else float("inf"))
        time.sleep(args.period)
    return seconds[0], seconds[1]


def slow_copy(args, root: Path, pending: dict[str, list[Path]]) -> str:
    name = sorted(pending)[0]
    src = pending[name].pop(0)
    raw = src.read_bytes()
    chunks = 20
    with open(root / name / src.name, "wb") as fh:
        for i in range(chunks):
            fh.write(raw[i * len(raw) // chunks:(i + 1) * len(raw) // chunks])
            fh.flush()
            time.sleep(args.slow_s / chunks)
    t_end = time.time()
    while time.time() - t_end < 300:
        if src.name in lc_rows(root / name):
            where = "rejected list too (WRONG)" if src.name in rejected(root / name) else "not in the rejected list"
            return f"in the light curve {time.time() - t_end:.1f} s after its last byte, {where}"
        time.sleep(0.3)
    return "NOT in the light curve within 300 s (WRONG)"


def sigterm(root: Path, pending: dict[str, list[Path]], proc: subprocess.Popen) -> tuple[float, list[str]]:
    name = sorted(pending)[1]
    land(pending[name].pop(0), root / name)
    t_end = time.time() + 120
    while dataset_lock.read_lock(root / name) is None and time.time() < t_end:
        time.sleep(0.05)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    stop_s = time.time() - t0
    locks = [str(p.parent.relative_to(root)) for p in root.rglob(dataset_lock.LOCK_NAME)]
    return stop_s, locks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", type=int, default=10)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--stars", type=int, default=None,
                    help="stars drawn per dataset (the generator's n_stars; seeing then 1.2-2.0\"), else its default")
    ap.add_argument("--initial", type=int, default=3, help="frames of each dataset before the watcher starts")
    ap.add_argument("--arrivals", type=int, default=30, help="frames landed, round-robin")
    ap.add_argument("--period", type=float, default=15.0, help="seconds between two landings")
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--max-parallel", type=int, default=2)
    ap.add_argument("--slow-s", type=float, default=10.0)
    ap.add_argument("--tom", action="store_true", help="upload to a local TOM Toolkit server (tests/tom_server.py)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/luigi_phot_watch_latency"))
    args = ap.parse_args()
    if args.tom:
        from tests.tom_server import running_tom

        with running_tom() as tom:
            run(args, tom)
    else:
        run(args)


if __name__ == "__main__":
    main()
