"""The Luigi tasks: thin shells that wire the science modules to files in red_dir.

ReduceDataset runs beneath itself ReleaseLock <- UploadToTOM <- BuildLightcurve <-
MeasureImage per frame <- BuildCatalogue <- LockDataset; ReductionManager runs many
ReduceDataset beneath itself, max_parallel at once (scheduling.py, batch.py).
"""

from .catalogue import BuildCatalogue
from .lightcurve import BuildLightcurve
from .lock import LockDataset, ReleaseLock
from .manager import ReductionManager
from .measure import MeasureImage
from .reduce import ReduceDataset
from .upload import UploadToTOM

__all__ = ["LockDataset", "BuildCatalogue", "MeasureImage", "BuildLightcurve", "UploadToTOM", "ReleaseLock",
           "ReduceDataset", "ReductionManager"]
