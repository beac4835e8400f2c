"""sklearn-selflabel: self-labelling deep clustering as a scikit-learn estimator."""

from ._persistence import load
from .clusterer import SelfLabelingClusterer
from .metrics import clustering_accuracy
from .sinkhorn import SinkhornResult, sinkhorn_equipartition

__all__ = [
    "SelfLabelingClusterer",
    "SinkhornResult",
    "clustering_accuracy",
    "load",
    "sinkhorn_equipartition",
]
__version__ = "0.1.0"
