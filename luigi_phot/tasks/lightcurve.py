"""BuildLightcurve: measure every frame (dynamic dependencies), calibrate, write the
light curve, the TOM CSV, the all-stars time series, the rejected list and plots.

The light curve is current while its input key holds: the configuration, the
catalogue, and every frame's name and content digest. Frames that left red_dir
or changed content since the last light curve are named in the log (a
warning); a light curve with no usable frame is not written, the stage fails
saying why.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import luigi

import numpy as np

from ..dataset import (PRODUCTS_DIR, atomic_paths, catalogue_header, catalogue_path, duplicate_exposures, ecsv_meta,
                       frame_identities, is_inside, measurement_dir, measurement_key, read_json, retry_markers,
                       retry_path, write_json_atomic)
from ..names import UnsafeName, safe_token, shown
from .base import DatasetStage, StageError, one_line_error, warnings_to_log
from .catalogue import BuildCatalogue, reference_name
from .lock import LockDataset
from .measure import MeasureImage
from .memory import for_large_arrays

__all__ = ["BuildLightcurve"]


def _duplicates(records, reference_image: str) -> dict[str, str]:
    """{frame: why it is not used} for measured frames that claim the same exposure as
    another (``dataset.duplicate_exposures``: copies with the same pixels - the same file
    under two names, or a frame and its fpack'ed or funpack'ed copy - are one frame,
    kept once, the reference first; different pixels at one time are all refused)."""
    def mid(r):
        try:
            return float(r.values.get("MJDMID"))
        except (TypeError, ValueError):
            return None

    measured = [r for r in records if r.columns is not None]
    return duplicate_exposures({r.image: (mid(r), r.pixel_digest or r.digest) for r in measured},
                               [reference_image])


class _LightcurveTarget(luigi.LocalTarget):
    """The light curve made from the current inputs, with no frame waiting to be tried
    again (one that an earlier run rejected for an environmental cause)."""

    def __init__(self, path, key, retries_due, also_required=()):
        super().__init__(str(path))
        self.key = key
        self.retries_due = retries_due
        # the catalogue stage's finder chart and this stage's report page: part of every finished run
        self.also_required = tuple(also_required)

    def exists(self) -> bool:
        return (ecsv_meta(self.path).get("input_key") == self.key and not self.retries_due()
                and all(p.is_file() for p in self.also_required))


class BuildLightcurve(DatasetStage):
    """All frames measured, then calibrated into light curves."""

    def requires(self):
        return {"lock": LockDataset(red_dir=self.red_dir, run_id=self.run_id),
                "catalogue": BuildCatalogue(red_dir=self.red_dir, run_id=self.run_id)}

    def _names(self):
        from ..photometry.lightcurve import product_names

        filter_name, source = self._catalogue_filter()
        try:
            return product_names(self.config.target.name, filter_name, source)
        except UnsafeName as exc:   # BuildCatalogue refuses such a filter: a catalogue edited by hand
            raise StageError(f"{self.red}: {exc}") from None

    def filter_token(self) -> str:
        """The dataset's filter as it appears in file names (see names.safe_token)."""
        filter_name, source = self._catalogue_filter()
        return safe_token(filter_name, "FILTER", source, rewrite=True)

    def _catalogue_filter(self) -> tuple[str, str]:
        """The dataset's filter (from the catalogue) and the frame it comes from."""
        hdr = catalogue_header(catalogue_path(self.red))
        if hdr is None:
            return "unknown", "the catalogue"
        return str(hdr.get("FILTER")), shown(reference_name(hdr) or "the catalogue")

    @property
    def index_path(self) -> Path:
        return self.red / PRODUCTS_DIR / "frame_index.json"

    def input_key(self) -> str:
        cfg = self.config
        frames = [(f.name, f.digest) for f in frame_identities(self.red)]
        text = json.dumps({"lc": cfg.lightcurve_key(), "measure": measurement_key(self.red, cfg),
                           "frames": frames, "tom_flagged": cfg.tom.include_flagged})
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def retries_due(self) -> list[str]:
        """Frames that another run rejected for an environmental cause: to be measured again."""
        markers = retry_markers(self.red, measurement_key(self.red, self.config))
        return sorted(f for f, m in markers.items() if m.get("run_id") != self.run_id)

    def output(self):
        names = self._names()
        return _LightcurveTarget(self.red / names["lc_ecsv"], self.input_key(), self.retries_due,
                                 [self.red / names["finder_png"], self.red / names["report_html"]])

    def run(self):
        self.check_lock()
        names = [f.name for f in frame_identities(self.red)]
        measures = [MeasureImage(red_dir=self.red_dir, run_id=self.run_id, image=n) for n in names]
        to_measure = sum(not m.complete() for m in measures)
        if to_measure:  # run() starts again after the yield, when there is none left
            self.record("measuring", frames=len(measures), to_measure=to_measure)
        measures = yield measures
        self.check_lock()
        self._build([Path(m.path) for m in measures])
        self._write_report()

    def _write_report(self, failure: ValueError | None = None) -> None:
        """The dataset's page (luigi_phot/report/page.py), at the end of every run; also when
        the light curve cannot be made, saying why (then it never hides that error)."""
        from ..report import write_dataset_report

        try:
            with self.timed() as t:
                path = write_dataset_report(self.red, self.config.target.name, self._names(), self.run_id, failure)
            self.note(f"report {path.name} written in {t.seconds:.1f} s")
        except Exception as exc:
            if failure is None:
                raise
            self.note(f"the report could not be written: {one_line_error(exc) or repr(exc)}", 30)

    @warnings_to_log
    @for_large_arrays
    def _build(self, paths):
        from ..photometry import plots
        from ..photometry.catalogue import Catalogue
        from ..photometry.lightcurve import build_lightcurve, write_products
        from ..photometry.measurement_cache import MEASUREMENT_CACHE_NAME, read_measurements

        cfg = self.config
        with self.timed() as t:
            records, n_read = read_measurements(paths, self.red / PRODUCTS_DIR / MEASUREMENT_CACHE_NAME,
                                                progress=self._reading_progress)
            self._note_changes(records)
            cat = Catalogue.load(catalogue_path(self.red))
            duplicates = _duplicates(records, cat.reference_image)
            self.report_status("calibrating")
            try:
                products = build_lightcurve([r for r in records if r.image not in duplicates], cat,
                                            cfg.target.name, cfg.target.ra_deg, cfg.target.dec_deg,
                                            cfg.photometry.default_zero_point, extra_rejected=duplicates)
            except ValueError as exc:
                self._write_report(failure=exc)
                raise StageError(f"{self.red}: {exc}") from None
            products.lightcurve.meta["input_key"] = self.input_key()
            products.lightcurve.meta["neighbour_subtraction"] = cfg.photometry.subtract_neighbours
            files = self._names()
            # the .ecsv is renamed last: its input_key marks the stage complete
            order = ["all_stars", "lc_csv", "rejected", "lc_png", "noise_png", "crowding_png", "lc_ecsv"]
            final = {k: self.red / files[k] for k in order}
            self.report_progress(70)
            self.report_status("writing products")
            title = f"{cfg.target.name} {cat.filter_name}"
            comparison = np.flatnonzero(np.asarray(products.stars["comparison"]))[:300]
            retry = {f: str(m.get("reason")) for f, m in retry_markers(self.red, measurement_key(self.red, cfg)).items()
                     if f not in duplicates}
            index = {"frames": {r.image: {"mjd": r.values.get("MJDMID"), "digest": r.digest,
                                          "rejected": duplicates.get(r.image, r.rejected)} for r in records},
                     "retry": retry,
                     "n_measured": products.meta["n_measured"], "n_rejected": products.meta["n_rejected"],
                     "lightcurve": files["lc_ecsv"],
                     "products": [files[k] for k in order] + [files["finder_png"], files["report_html"]]}
            write_json_atomic(self.index_path, index, inside=self.red)
            with atomic_paths(final, inside=self.red) as tmp:
                write_products(products, tmp, include_flagged_in_tom=cfg.tom.include_flagged)
                plots.plot_lightcurve(products.lightcurve, tmp["lc_png"], title)
                plots.plot_noise(products.stars, tmp["noise_png"], title + ": constant stars")
                plots.plot_fwhm_residuals(products.frames, products.lightcurve, products.flux, comparison,
                                          tmp["crowding_png"], title + ": residuals against seeing")
            self._remove_other_measurements(paths)
        lc = products.lightcurve
        mode = "neighbours subtracted" if cfg.photometry.subtract_neighbours else "plain apertures"
        self.note(f"light curve of {len(lc)} points, {mode} ({products.meta['n_measured']} frames measured, "
                  f"{products.meta['n_rejected']} rejected; zero point {products.meta['zero_point_ref']:.3f} "
                  f"from {products.meta['zero_point_source']}) written in {t.seconds:.1f} s; "
                  f"{n_read} of {len(paths)} measurement files read, the others from the cache; "
                  + ", ".join(f"{k} {v:.2f}" for k, v in products.meta["step_seconds"].items()) + " s")
        if retry:
            self.note(f"{len(retry)} frame(s) rejected for a cause outside the frame, to be tried again on the "
                      f"next run (the dataset is not up to date until then): "
                      f"{', '.join(shown(f) for f in sorted(retry))}", 30)
        for row in products.rejected:
            self.note(f"rejected {row['image']}: {row['reason']}", 30)
        self.report_progress(100)

    def _reading_progress(self, k: int, n: int) -> None:
        if k % 25 == 1:
            self.report_progress(int(60 * k / max(n, 1)))
            self.report_status(f"reading measurements {k}/{n}")

    def _note_changes(self, records, shown_at_most: int = 20) -> None:
        """Warn about frames of the last light curve that are gone from red_dir, and
        frames whose content changed since (their points change without a word otherwise)."""
        last = (read_json(self.index_path) or {}).get("frames")
        if not isinstance(last, dict):
            return
        now = {r.image: r.digest for r in records}
        gone = sorted(set(last) - set(now))
        changed = sorted(n for n in set(last) & set(now)
                         if isinstance(last[n], dict) and last[n].get("digest") not in (None, now[n]))
        for names, what in ((gone, "is no longer in red_dir: its point leaves the light curve"),
                            (changed, "has new content since the last light curve: it was measured again")):
            for name in names[:shown_at_most]:
                self.note(f"{shown(name)} {what}", 30)
            if len(names) > shown_at_most:
                self.note(f"... and {len(names) - shown_at_most} more frames that {what.split(':')[0]}", 30)

    def _remove_other_measurements(self, paths) -> None:
        """Measurements not of the current frames' content (other settings or catalogues,
        frames replaced or gone) are no longer needed."""
        keep = measurement_dir(self.red, measurement_key(self.red, self.config))
        if not is_inside(keep, self.red):   # a symbolic link out of red_dir: never delete through it
            return
        for d in (self.red / PRODUCTS_DIR / "frames").glob("*"):
            if d.is_dir() and d != keep:
                shutil.rmtree(d, ignore_errors=True)
        current = {Path(p).name for p in paths} | {retry_path(Path(p)).name for p in paths}
        for f in keep.glob("*"):
            if f.name not in current and not f.name.startswith(".") and f.is_file():
                f.unlink(missing_ok=True)
