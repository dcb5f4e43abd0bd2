"""luigi_phot: a Luigi pipeline from directories of FITS frames to calibrated
aperture-photometry light curves, published to a TOM.

``luigi --module luigi_phot ReduceDataset --red-dir DIR`` and
``luigi --module luigi_phot ReductionManager --config FILE`` find their tasks here.
"""

__version__ = "0.1.0"


def _default_retcodes() -> None:
    """Make the `luigi` command exit non-zero when a task failed, unless the user's own
    luigi configuration says otherwise (luigi's own defaults are all 0)."""
    from luigi.configuration import get_config

    cfg = get_config()
    if not cfg.has_section("retcode"):
        cfg.add_section("retcode")
    for key, code in (("already_running", 10), ("missing_data", 20), ("not_run", 25),
                      ("task_failed", 30), ("scheduling_error", 35), ("unhandled_exception", 40)):
        if not cfg.has_option("retcode", key):
            cfg.set("retcode", key, str(code))


_default_retcodes()


def _quiet_console() -> None:
    """The `luigi` command prints warnings, errors and its execution summary, not the
    scheduler's detail, unless the user's luigi configuration sets its own logging
    (`--log-level INFO` or `DEBUG` brings the detail back; see luigi_phot/console.py)."""
    from luigi.configuration import get_config

    from .console import set_luigi_defaults

    set_luigi_defaults(get_config())


_quiet_console()

from .tasks import (BuildCatalogue, BuildLightcurve, LockDataset, MeasureImage, ReduceDataset,  # noqa: E402
                    ReductionManager, ReleaseLock, UploadToTOM)
from .tasks.base import install_console_filter  # noqa: E402

install_console_filter()

__all__ = ["LockDataset", "BuildCatalogue", "MeasureImage", "BuildLightcurve", "UploadToTOM", "ReleaseLock",
           "ReduceDataset", "ReductionManager"]
