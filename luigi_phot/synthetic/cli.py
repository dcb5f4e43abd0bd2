"""The luigi-phot-synthetic command."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
from pathlib import Path
from typing import Sequence

import yaml

from .config import CONFIG_NAME, LCO_SITES, STARS_NAME, SyntheticConfig, TRUTH_NAME
from .generate import generate_dataset
from .real_series import series_from_real_frame


def _parse_size(text: str) -> tuple[int, int]:
    """'1024' -> (1024, 1024); '2048x4096' (NX x NY) -> (4096, 2048) as (ny, nx)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N or NXxNY, e.g. 1024 or 4096x4096")
    nx = int(m.group(1))
    ny = int(m.group(2)) if m.group(2) else nx
    return ny, nx


def _none_or(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else kind(text)
    return parse


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="luigi-phot-synthetic",
        description="Write a synthetic LCO/BANZAI-style dataset (frames, truth tables, "
                    "reduction_config.yaml) into an empty directory, or a short series from a real frame.")
    p.add_argument("--out", required=True, type=Path, help="dataset directory (red_dir); must be empty or new")
    p.add_argument("--overwrite", action="store_true",
                   help="remove a previous synthetic dataset's own files in --out first")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--n-frames", type=int)
    p.add_argument("--size", type=_parse_size, help="frame size: N or NXxNY (default 1024)")
    p.add_argument("--n-stars", type=int, help="stars per frame area down to --mag-faint")
    p.add_argument("--mag-faint", type=float)
    p.add_argument("--compress", choices=("none", "all", "mixed"))
    p.add_argument("--site", choices=sorted(LCO_SITES))
    p.add_argument("--n-nights", type=int)
    p.add_argument("--exptime-s", type=float)
    p.add_argument("--seeing", type=float, nargs=2, metavar=("MIN", "MAX"), help="seeing range [arcsec]")
    p.add_argument("--beta", type=float, nargs=2, metavar=("MIN", "MAX"), help="Moffat beta range")
    p.add_argument("--jitter-pix", type=float)
    p.add_argument("--rotation-deg", type=float)
    p.add_argument("--wcs-error-arcsec", type=float)
    p.add_argument("--n-variables", type=int)
    p.add_argument("--n-saturated", type=int)
    p.add_argument("--cosmic-rate", type=float, help="cosmic rays per megapixel per second")
    p.add_argument("--bad-column", type=_none_or(int), default=argparse.SUPPRESS,
                   help="x index of a bad column, or 'none'")
    p.add_argument("--bpm-marks-cosmics", action="store_true")
    p.add_argument("--target-name")
    p.add_argument("--target-mag", type=float, help="target baseline magnitude (source + blend)")
    p.add_argument("--blend-fraction", type=float)
    p.add_argument("--t0-mjd", type=float)
    p.add_argument("--tE-days", type=float)
    p.add_argument("--t0-span-fraction", type=float,
                   help="without --t0-mjd: the event's peak at this fraction of the observed span "
                        "(0 first frame, 1 last; 0.5 shows baseline, rise, peak and fall)")
    p.add_argument("--u0", type=float)
    p.add_argument("--target-isolation-arcsec", type=_none_or(float), default=argparse.SUPPRESS,
                   help="drop stars brighter than target+3 mag within this radius, or 'none'")
    p.add_argument("--target-neighbour", type=float, nargs=2, metavar=("SEP_ARCSEC", "DELTA_MAG"))
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="any SyntheticConfig field, value in YAML syntax (e.g. --set 'sky_e_per_s_per_pix=[1, 3]')")
    p.add_argument("--from-real", type=Path, metavar="FITS",
                   help="instead: a series from this real frame (uses --seed, --n-frames)")
    p.add_argument("--real-wcs", type=Path, metavar="FITS", help="with --from-real: header with the correct WCS")
    return p


_CLI_FIELDS = {
    "n_frames": "n_frames", "size": "shape", "n_stars": "n_stars", "mag_faint": "mag_faint",
    "compress": "compress", "site": "site", "n_nights": "n_nights", "exptime_s": "exptime_s",
    "seeing": "seeing_arcsec", "beta": "moffat_beta", "jitter_pix": "jitter_pix",
    "rotation_deg": "rotation_deg", "wcs_error_arcsec": "wcs_error_arcsec", "n_variables": "n_variables",
    "n_saturated": "n_saturated", "cosmic_rate": "cosmic_rays_per_mpix_per_s", "target_name": "target_name",
    "target_mag": "target_mag_baseline", "blend_fraction": "event_blend_fraction", "t0_mjd": "event_t0_mjd",
    "tE_days": "event_tE_days", "u0": "event_u0", "target_neighbour": "target_neighbour",
    "t0_span_fraction": "event_t0_span_fraction",
}


def _config_from_args(args: argparse.Namespace) -> SyntheticConfig:
    values: dict = {"seed": args.seed}
    for arg, name in _CLI_FIELDS.items():
        v = getattr(args, arg)
        if v is not None:
            values[name] = tuple(v) if isinstance(v, list) else v
    # absent unless given (default=SUPPRESS), so that 'none' can switch them off
    for name in ("bad_column", "target_isolation_arcsec"):
        if hasattr(args, name):
            values[name] = getattr(args, name)
    default_column = SyntheticConfig.bad_column
    if "bad_column" not in values and "shape" in values and default_column >= values["shape"][1]:
        values["bad_column"] = int(0.3 * values["shape"][1])  # the default column is off a small frame
    if args.bpm_marks_cosmics:
        values["bpm_marks_cosmics"] = True
    known = {f.name for f in dataclasses.fields(SyntheticConfig)}
    for item in args.set:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise SystemExit(f"--set {item!r}: expected NAME=VALUE with NAME a SyntheticConfig field "
                             f"({', '.join(sorted(known))})")
        value = yaml.safe_load(text)
        values[key] = tuple(value) if isinstance(value, list) else value
    return SyntheticConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``luigi-phot-synthetic --out DIR [--seed N --n-frames N --size 4096x4096 ...]``."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.from_real is not None:
        ds = series_from_real_frame(args.from_real, args.out, n_frames=args.n_frames or 8, seed=args.seed,
                                    wcs_path=args.real_wcs, target_name=args.target_name,
                                    overwrite=args.overwrite)
        print(f"wrote {len(ds.frame_paths)} frames from {args.from_real} into {ds.red_dir} "
              f"in {ds.elapsed_s:.1f} s; truth: {ds.truth_path.name}")
        return 0
    try:
        cfg = _config_from_args(args)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))

    def progress(i: int, n: int, path: Path) -> None:
        print(f"  [{i}/{n}] {path.name}", flush=True)

    try:
        ds = generate_dataset(args.out, cfg, overwrite=args.overwrite, progress=progress)
    except FileExistsError as exc:
        print(f"luigi-phot-synthetic: {exc}", file=sys.stderr)
        return 2
    t = ds.truth
    dmag = 2.5 * math.log10(max(t["target_flux_e_per_s"]) / min(t["target_flux_e_per_s"]))
    print(f"wrote {len(ds.frame_paths)} frames {cfg.shape[1]}x{cfg.shape[0]} into {ds.red_dir} in "
          f"{ds.elapsed_s:.1f} s (pixels {ds.render_s:.1f} s); target {cfg.target_name} changes by "
          f"{dmag:.2f} mag; truth: {TRUTH_NAME}, {STARS_NAME}; config: {CONFIG_NAME}")
    return 0
