"""The SPEC core: pure torch, no Lightning or Hydra."""

from spec_align.spectrum.algorithm import build_feature_maps, compare, difference_kernel
from spec_align.spectrum.diff import spec_diff, spec_diff_features
from spec_align.spectrum.features import (
    CosineFeatures,
    RandomFourierFeatures,
    cosine_kernel,
    estimate_sigma,
    gaussian_kernel,
)
from spec_align.spectrum.linalg import JointCovariance
from spec_align.spectrum.result import SpecResult
from spec_align.spectrum.stream import SourceChangedError

__all__ = [
    "CosineFeatures",
    "JointCovariance",
    "RandomFourierFeatures",
    "SourceChangedError",
    "SpecResult",
    "build_feature_maps",
    "compare",
    "cosine_kernel",
    "difference_kernel",
    "estimate_sigma",
    "gaussian_kernel",
    "spec_diff",
    "spec_diff_features",
]
