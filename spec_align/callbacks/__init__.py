"""Training callbacks: watch the differential clusters of encoder and reference evolve."""

from spec_align.callbacks.checkpoint import LastCheckpoint
from spec_align.callbacks.clusters import ClusterLogCallback
from spec_align.callbacks.mode_tracking import ModeTracker

__all__ = ["ClusterLogCallback", "LastCheckpoint", "ModeTracker"]
