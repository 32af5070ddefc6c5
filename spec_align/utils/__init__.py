"""Plumbing shared by the training entry points: distributed gathers, resolvers, logging."""

from spec_align.utils.distributed import gather_uneven, gather_with_grad
from spec_align.utils.logging import get_logger, log_config
from spec_align.utils.resolvers import register_resolvers

__all__ = ["gather_uneven", "gather_with_grad", "get_logger", "log_config", "register_resolvers"]
