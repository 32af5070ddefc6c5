"""LightningModules and their schedules."""

from spec_align.modules.init_weights import load_encoder_weights
from spec_align.modules.schedules import warmup_cosine_schedule
from spec_align.modules.spec_align_module import SpecAlignModule

__all__ = ["SpecAlignModule", "load_encoder_weights", "warmup_cosine_schedule"]
