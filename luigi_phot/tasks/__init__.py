"""The Luigi tasks: thin shells that wire the science modules to files in red_dir.

ReduceDataset -> (LockDataset -> BuildCatalogue -> MeasureImage per frame ->
BuildLightcurve -> UploadToTOM -> ReleaseLock); ReductionManager runs many
ReduceDataset at once.
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
