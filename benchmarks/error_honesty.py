"""Are the target's error bars honest? A Monte Carlo over noise realisations of held-out frames.

    PYTHONPATH=$PWD python benchmarks/error_honesty.py [--cases sinistro neighbour]
                                                      [--realisations 6] [--frames 16] [--out DIR]

For each case of tests/test_heldout.py (frames from tests/heldout.py, a generator written
apart from luigi_phot.synthetic), the same frames - field, seeing, pointing, defects, the
event - are generated with fresh photon and read noise (HeldOutCase.noise_seed) and each
set is reduced with the real ``luigi`` command. Per realisation it prints:

- realised: the standard deviation over frames of the noise that landed in the target's
  aperture, in units of its expected value (from the generator's truth): 1 +- 0.18 for
  16 frames; this realisation's own luck;
- std(res/err): the target's normalised residual std against the truth
  (validation.target_figures), and the largest flux_err;
- constant stars' measured/predicted RMS (bright, mid, faint).

A std(res/err) that follows the realised noise is the realisation's luck; one well below
it, realisation after realisation, is error bars larger than the scatter (or a flux that
is not an independent measurement). Pooled figures are the rms over realisations. Takes
about 15 s a realisation of 16 frames of 600x600 on 2 cores. Writes
benchmarks/results/error_honesty.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from astropy.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from luigi_phot.validation import constant_star_figures, target_figures  # noqa: E402
from tests.heldout import TRUTH_NAME, make_heldout_dataset  # noqa: E402
from tests.test_heldout import CASES  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def reduce(red: Path) -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "luigi"), "--module", "luigi_phot", "ReduceDataset",
                           "--red-dir", str(red), "--local-scheduler", "--workers", "2"],
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"reduction of {red} failed:\n{done.stderr[-3000:]}")


def realisation(case, out: Path) -> dict:
    red = make_heldout_dataset(out, case)
    reduce(red)
    truth = Table.read(red / TRUTH_NAME, format="ascii.ecsv")
    lc = Table.read(next(red.glob("*_lc.ecsv")), format="ascii.ecsv")
    fig = target_figures(lc, truth)
    realised = np.asarray(truth["target_noise_e"]) / np.asarray(truth["target_noise_expected_e"])
    stars = constant_star_figures(next((red / "photometry").glob("*_all_stars.fits")))
    return {"noise_seed": case.noise_seed, "realised_noise_std": float(np.std(realised, ddof=1)),
            "std_norm_resid": fig.std_norm_resid, "max_abs_norm_resid": fig.max_abs_norm_resid,
            "slope": fig.slope, "n_points": fig.n_points, "n_flagged": fig.n_flagged,
            "max_flux_err": float(np.nanmax(np.asarray(lc["flux_err"], float))),
            "constant_stars": [b["median_rms_ratio"] for b in stars]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["sinistro", "neighbour"], choices=sorted(CASES))
    ap.add_argument("--realisations", type=int, default=6)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--out", help="keep the datasets here (default: a temporary directory, removed)")
    args = ap.parse_args(argv)
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="error_honesty-"))
    results = {}
    print("| case | noise seed | realised noise std | target std(res/err) | max abs | largest flux_err [e-/s] "
          "| constant stars RMS/pred. |")
    print("|---|---|---|---|---|---|---|")
    try:
        for name in args.cases:
            rows = []
            for k in range(args.realisations):
                case = dataclasses.replace(CASES[name], n_frames=args.frames, noise_seed=k)
                out = root / f"{name}-{k}" / "rp"
                if out.parent.exists():
                    shutil.rmtree(out.parent)
                r = realisation(case, out)
                rows.append(r)
                print(f"| {name} | {k} | {r['realised_noise_std']:.2f} | {r['std_norm_resid']:.2f} | "
                      f"{r['max_abs_norm_resid']:.1f} | {r['max_flux_err']:.3g} | "
                      + " ".join(f"{v:.2f}" for v in r["constant_stars"]) + " |", flush=True)
            pooled = {key: float(np.sqrt(np.mean([r[key] ** 2 for r in rows])))
                      for key in ("realised_noise_std", "std_norm_resid")}
            print(f"| {name} | pooled (rms) | {pooled['realised_noise_std']:.2f} | {pooled['std_norm_resid']:.2f} "
                  f"| | | |", flush=True)
            results[name] = {"frames": args.frames, "realisations": rows, "pooled": pooled}
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "error_honesty.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
