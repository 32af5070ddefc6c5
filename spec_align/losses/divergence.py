"""Divergence checks: stop at the first non-finite loss, weight or embedding, and say so.

A NaN or inf anywhere in training is never a state to continue from: the checks raise
`DivergenceError` naming the step, what went non-finite and the last checkpoint written (every
checkpoint passed `check_finite_state` before it was written, so that one is good).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DivergenceError",
    "check_finite_embeddings",
    "check_finite_losses",
    "check_finite_state",
    "last_good_checkpoint",
    "nonfinite_names",
]

# What the user reads for each loss term the module logs under train/<name>.
TERM_ROLES = {
    "task_loss": "task total",
    "spec_diff": "spectral penalty",
    "kuea": "kernel-matching penalty",
    "kuea_frobenius": "kernel-matching penalty",
    "anchor": "anchor term",
    "loss": "weighted total",
}
_MAX_NAMES = 5  # non-finite tensors named in a message; the rest are counted


def _role(name: str) -> str:
    return "task term" if name.startswith("task/") else TERM_ROLES.get(name, "term")


class DivergenceError(FloatingPointError):
    """Training diverged: a loss term, a weight or the encoder's output is NaN or inf."""


def nonfinite_names(tensors: Iterable[tuple[str, Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold NaN or inf, in order.

    One host synchronisation for all tensors, not one per tensor.
    """
    named = [(name, t) for name, t in tensors if t.is_floating_point() and t.numel()]
    if not named:
        return []
    flags = torch.stack([t.detach().isfinite().all().cpu() for _, t in named]).tolist()
    return [name for (name, _), finite in zip(named, flags, strict=True) if not finite]


def last_good_checkpoint(trainer: Any) -> str | None:
    """The newest good checkpoint file: of those the checkpoint callbacks wrote (latest and
    best), and the one the run resumed from (a resumed run writes to a new directory)."""
    paths = [getattr(trainer, "ckpt_path", None)]
    for callback in getattr(trainer, "checkpoint_callbacks", []):
        paths += [
            getattr(callback, "last_model_path", None),
            getattr(callback, "best_model_path", None),
        ]
    existing = [Path(p) for p in paths if p and Path(p).is_file()]
    return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else None


def _advice(trainer: Any) -> str:
    # Looked up only when raising: no file-system access on the steps that pass.
    checkpoint = last_good_checkpoint(trainer)
    where = checkpoint or "none (no checkpoint was written before this step)"
    resume = f" and resume with ckpt_path={checkpoint}" if checkpoint else ""
    return (
        f"Last good checkpoint: {where}. Lower model.optimizer.lr or clip gradients "
        f"(+trainer.gradient_clip_val=1.0){resume}."
    )


def check_finite_losses(terms: Mapping[str, Tensor], step: int, trainer: Any = None) -> None:
    """Raise `DivergenceError` if any loss term is NaN or inf.

    Args:
        terms: the step's loss terms by logged name (train/<name>), scalars.
        step: the optimizer step (trainer.global_step) whose batch gave these terms.
        trainer: the trainer, whose checkpoint callback names the last good checkpoint.
    """
    bad = nonfinite_names(terms.items())
    if not bad:
        return
    # Name the terms themselves, not the totals they made non-finite (the weighted total,
    # and the task's total of its own terms, task/<term>).
    totals = {"loss"} | ({"task_loss"} if any(n.startswith("task/") for n in bad) else set())
    culprits = [name for name in bad if name not in totals] or bad
    described = ", ".join(f"the {_role(name)} train/{name}" for name in culprits)
    values = ", ".join(f"{name}={float(value.detach()):.4g}" for name, value in terms.items())
    raise DivergenceError(
        f"training diverged at step {step}: {described} {'is' if len(culprits) == 1 else 'are'} "
        f"non-finite (loss terms: {values}). "
        f"No optimizer step was taken with it. {_advice(trainer)}"
    )


def check_finite_state(state: Mapping[str, Any], step: int, trainer: Any = None) -> None:
    """Raise `DivergenceError` if a checkpoint about to be written holds NaN or inf tensors.

    Args:
        state: the checkpoint dict; its "state_dict" (parameters and buffers) and
            "optimizer_states" are checked.
        step: the optimizer step of the checkpoint.
        trainer: the trainer, whose checkpoint callback names the last good checkpoint.
    """
    bad = nonfinite_names(_named_tensors(state.get("state_dict", {}), ""))
    bad += nonfinite_names(_named_tensors(state.get("optimizer_states", []), "optimizer_states"))
    if not bad:
        return
    shown = ", ".join(bad[:_MAX_NAMES]) + (
        f" and {len(bad) - _MAX_NAMES} more" if len(bad) > _MAX_NAMES else ""
    )
    raise DivergenceError(
        f"training diverged by step {step}: not writing a checkpoint whose tensors are NaN or "
        f"inf ({shown}); an optimizer step can make them so after a finite loss. "
        f"{_advice(trainer)}"
    )


def check_finite_embeddings(
    embeddings: Tensor,
    weights: Iterable[tuple[str, Tensor]],
    step: int,
    where: str,
    trainer: Any = None,
) -> None:
    """Raise `DivergenceError` if the encoder's embeddings hold NaN or inf.

    The encoder's inputs are images, so non-finite embeddings mean the encoder diverged,
    not that the data is bad; the message says which of its weights are non-finite.

    Args:
        embeddings: the encoder's output, (n, D).
        weights: the encoder's state dict items (parameters and persistent buffers).
        step: the optimizer step of the weights that produced the embeddings.
        where: what was embedded ("the validation probe").
        trainer: the trainer, whose checkpoint callback names the last good checkpoint.
    """
    rows = ~embeddings.detach().isfinite().all(dim=-1)
    if not bool(rows.any()):
        return
    bad = nonfinite_names(weights)
    if bad:
        cause = (
            f"{len(bad)} of its weight tensors are NaN or inf ({', '.join(bad[:_MAX_NAMES])}): "
            "the weights diverged, the data is not at fault"
        )
    else:
        cause = "its weights are finite but its activations overflow (weights grown too large)"
    raise DivergenceError(
        f"training diverged by step {step}: the encoder's output is non-finite on "
        f"{int(rows.sum())} of {rows.numel()} rows of {where}; {cause}. {_advice(trainer)}"
    )


def _named_tensors(obj: Any, prefix: str) -> Iterable[tuple[str, Tensor]]:
    """Every tensor inside nested dicts and lists, with a dotted path as its name."""
    if isinstance(obj, Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list | tuple):
        for index, value in enumerate(obj):
            yield from _named_tensors(value, f"{prefix}[{index}]")
