"""What a reduction made, for people: a one-line summary of every output (for the
terminal, :mod:`.text`), one HTML page per dataset (:mod:`.page`) and the night's
overview of every dataset a manager run saw (:mod:`.overview`).

All three read the products through :mod:`.products` (one reader per file) and know
nothing of Luigi: the light-curve task and the ReductionManager each call one
function here at their end.
"""

from .overview import INDEX_NAME, write_night_overview
from .text import Output, describe_outputs, format_outputs

__all__ = ["Output", "describe_outputs", "format_outputs", "write_dataset_report", "write_night_overview",
           "INDEX_NAME"]


def __getattr__(name: str):
    # the page draws figures with the science stack: imported when first used, not with
    # the package (which every `luigi --module luigi_phot` command imports)
    if name == "write_dataset_report":
        from .page import write_dataset_report

        return write_dataset_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
