"""LightningModules and their schedules."""

from spec_align.modules.schedules import warmup_cosine_schedule
from spec_align.modules.spec_align_module import SpecAlignModule

__all__ = ["SpecAlignModule", "warmup_cosine_schedule"]
