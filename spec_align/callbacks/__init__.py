"""Training callbacks: the evolving differential clusters, checkpoints, data-wait time."""

from spec_align.callbacks.checkpoint import LastCheckpoint
from spec_align.callbacks.clusters import ClusterLogCallback
from spec_align.callbacks.data_wait import DataWaitTimer
from spec_align.callbacks.mode_tracking import ModeTracker

__all__ = ["ClusterLogCallback", "DataWaitTimer", "LastCheckpoint", "ModeTracker"]
