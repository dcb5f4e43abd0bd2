#!/usr/bin/env python
"""What content identity costs (issue 17): the first hashing of a dataset's frames,
and a no-op rerun's identity check with the digests cached.

    python benchmarks/digest_benchmark.py [--frames 40] [--size-mb 100] [--noop-frames 500]
                                          [--dir benchmarks/cache/digest] [--luigi-noop]

Cases (each timed in a new process, as a reduction would start):

first hashing   --frames files of --size-mb MB of random bytes (written once, kept in
                --dir), their digest cache removed: ``frame_identities(red_dir)``
                reads every byte once (several files at once). Beside it the floor,
                one plain read: ``cat files > /dev/null``. Both cold (the files
                evicted from the page cache with posix_fadvise(DONTNEED) first) and
                warm. The time for 500 frames of 100 MB is scaled from the rate.
no-op check     --noop-frames sparse files of --size-mb MB each (apparent size; no
                disk used), hashed once (reading zeros: the hashing's own speed,
                without the disk), then ``frame_identities`` with the cache: the
                identity check of a no-op rerun (one stat a frame and the cache
                file; no frame read) plus the fingerprint.
--luigi-noop    also the whole no-op rerun through the ``luigi`` command of a finished
                500-frame dataset (``run_benchmarks.py --cases noop``: small frames;
                the identity check does not depend on their size, see above).

Prints a table; writes benchmarks/results/digest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
MB = 1 << 20


def _files(directory: Path, n: int, size_mb: int, sparse: bool) -> list[Path]:
    """n frame-named files of size_mb MB in directory (made once; random bytes, or sparse)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        path = directory / f"frame-{k:04d}.fits"
        if not path.exists() or path.stat().st_size != size_mb * MB:
            with open(path, "wb") as fh:
                if sparse:
                    fh.truncate(size_mb * MB)
                else:
                    for _ in range(size_mb):
                        fh.write(os.urandom(MB))
                    fh.flush()
                    os.fsync(fh.fileno())
        out.append(path)
    return out


def _evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (the next read comes from the disk)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _cat(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from luigi_phot import dataset
imported = time.perf_counter()
ids = dataset.frame_identities(sys.argv[1])
found = time.perf_counter()
dataset.fingerprint(type("C", (), {"fingerprint_key": lambda self: "x"})(), ids)
done = time.perf_counter()
print(json.dumps({"import_s": imported - t0, "identities_s": found - imported, "fingerprint_s": done - found,
                  "frames": len(ids), "readable": sum(i.readable for i in ids)}))
"""


def _identities(directory: Path, keep_cache: bool) -> dict:
    """frame_identities(directory) in a new process (no digest known in memory)."""
    if not keep_cache:
        shutil.rmtree(directory / "photometry", ignore_errors=True)
    done = subprocess.run([sys.executable, "-c", _CHILD, str(directory)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def case_first_hashing(directory: Path, n: int, size_mb: int, repeat: int = 2) -> dict:
    paths = _files(directory, n, size_mb, sparse=False)
    total_mb = n * size_mb
    rows = {"cold_cat_s": [], "cold_hash_s": [], "warm_cat_s": [], "warm_hash_s": []}
    for _ in range(repeat):
        _evict(paths)
        rows["cold_cat_s"].append(_cat(paths))
        _evict(paths)
        rows["cold_hash_s"].append(_identities(directory, keep_cache=False)["identities_s"])
        _cat(paths)
        rows["warm_cat_s"].append(_cat(paths))
        rows["warm_hash_s"].append(_identities(directory, keep_cache=False)["identities_s"])
    best = {k: min(v) for k, v in rows.items()}
    scale = 500 * 100 / total_mb
    return {"case": "first_hashing", "frames": n, "size_mb": size_mb, "total_mb": total_mb, **best,
            "all": rows, "cold_ratio": best["cold_hash_s"] / best["cold_cat_s"],
            "warm_ratio": best["warm_hash_s"] / best["warm_cat_s"],
            "cold_hash_500x100mb_s": best["cold_hash_s"] * scale, "cold_cat_500x100mb_s": best["cold_cat_s"] * scale}


def case_noop(directory: Path, n: int, size_mb: int, repeat: int = 5) -> dict:
    _files(directory, n, size_mb, sparse=True)
    shutil.rmtree(directory / "photometry", ignore_errors=True)
    time.sleep(2.5)   # digests of files younger than 2 s are not written to the cache
    first = _identities(directory, keep_cache=False)
    runs = [_identities(directory, keep_cache=True) for _ in range(repeat)]
    assert all(r["readable"] == n for r in runs)
    return {"case": "noop", "frames": n, "size_mb": size_mb,
            "first_hash_sparse_s": first["identities_s"],
            "sparse_hash_mb_per_s": n * size_mb / first["identities_s"],
            "identities_s": statistics.median(r["identities_s"] for r in runs),
            "fingerprint_s": statistics.median(r["fingerprint_s"] for r in runs),
            "import_s": statistics.median(r["import_s"] for r in runs)}


def case_luigi_noop() -> dict:
    done = subprocess.run([sys.executable, str(HERE / "run_benchmarks.py"), "--cases", "noop"], capture_output=True,
                          text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("{") and '"noop"' in ln)
    return json.loads(line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=40, help="files for the first-hashing case")
    ap.add_argument("--size-mb", type=int, default=100, help="size of each file (MB)")
    ap.add_argument("--noop-frames", type=int, default=500, help="files for the no-op case (sparse)")
    ap.add_argument("--dir", type=Path, default=HERE / "cache" / "digest", help="where the files are kept")
    ap.add_argument("--luigi-noop", action="store_true", help="also the whole luigi no-op of a 500-frame dataset")
    args = ap.parse_args(argv)
    results = [case_first_hashing(args.dir / "hash", args.frames, args.size_mb),
               case_noop(args.dir / "noop", args.noop_frames, args.size_mb)]
    if args.luigi_noop:
        results.append(case_luigi_noop())
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    load = os.getloadavg()
    print(f"Machine: {cpu}, {os.cpu_count()} cores, load {load[0]:.1f}; Python {platform.python_version()}; "
          f"{time.strftime('%Y-%m-%d')}")
    print("| case | measured | target |")
    print("|---|---|---|")
    h, n = results[0], results[1]
    print(f"| first hashing, {h['frames']} x {h['size_mb']} MB ({h['total_mb'] / 1024:.1f} GB), cold cache | "
          f"{h['cold_hash_s']:.1f} s; floor `cat` {h['cold_cat_s']:.1f} s: {h['cold_ratio']:.2f} x one read; "
          f"scaled to 500 x 100 MB: {h['cold_hash_500x100mb_s']:.0f} s (cat {h['cold_cat_500x100mb_s']:.0f} s) | "
          "about one read |")
    print(f"| the same, warm cache | {h['warm_hash_s']:.2f} s; `cat` {h['warm_cat_s']:.2f} s "
          f"({h['total_mb'] / h['warm_hash_s']:.0f} MB/s hashed, {h['total_mb'] / h['warm_cat_s']:.0f} MB/s read) | - |")
    print(f"| no-op identity check, {n['frames']} frames of {n['size_mb']} MB, digests cached | "
          f"{n['identities_s']:.3f} s + fingerprint {n['fingerprint_s']:.4f} s (package import "
          f"{n['import_s']:.2f} s); first hashing of the sparse files {n['first_hash_sparse_s']:.1f} s "
          f"({n['sparse_hash_mb_per_s']:.0f} MB/s, no disk) | part of 5 s |")
    if args.luigi_noop:
        r = results[2]
        print(f"| no-op rerun through `luigi`, {r['frames']}-frame dataset | {r['seconds_median']:.2f} s | 5 s |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "digest.json").write_text(json.dumps({"load": load, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
