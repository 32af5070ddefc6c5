"""Explaining two embeddings on a data set: streamed features, SPEC, and a readable report."""

from spec_align.explain.comparison import compare_embeddings, resolve_rff_dim
from spec_align.explain.loading import InputError, embedding_batches, load_embedding, load_list
from spec_align.explain.modes import label_purity
from spec_align.explain.report import log_report_to_wandb, write_report
from spec_align.explain.stability import mode_stability

__all__ = [
    "InputError",
    "compare_embeddings",
    "embedding_batches",
    "label_purity",
    "load_embedding",
    "load_list",
    "log_report_to_wandb",
    "mode_stability",
    "resolve_rff_dim",
    "write_report",
]
