"""spec_align: explain and align feature embeddings with SPEC differential clusters."""

from spec_align.spectrum import (
    CosineFeatures,
    JointCovariance,
    RandomFourierFeatures,
    SpecResult,
    compare,
    difference_kernel,
    estimate_sigma,
    spec_diff,
    spec_diff_features,
)

__version__ = "0.1.0"

__all__ = [
    "CosineFeatures",
    "JointCovariance",
    "RandomFourierFeatures",
    "SpecResult",
    "__version__",
    "compare",
    "difference_kernel",
    "estimate_sigma",
    "spec_diff",
    "spec_diff_features",
]
