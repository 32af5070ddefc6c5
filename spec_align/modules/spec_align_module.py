"""SPEC-align: train an encoder on its task while pulling its kernel towards a frozen reference."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from torchmetrics import MinMetric
from torchmetrics.classification import MulticlassAccuracy

from spec_align.data.transforms import ViewAdapter
from spec_align.encoders.base import FrozenEncoder, ImageEncoder
from spec_align.losses.anchor import AnchorLoss
from spec_align.losses.divergence import (
    check_finite_embeddings,
    check_finite_losses,
    check_finite_state,
)
from spec_align.losses.spectral import KernelMatchingPenalty, SpectralPenalty
from spec_align.losses.task import ClassificationLoss, TaskLoss
from spec_align.modules.init_weights import WeightsSource, load_encoder_weights
from spec_align.modules.probes import attribute_probes, attribute_values, gather_objects
from spec_align.utils.distributed import (
    all_ranks,
    any_rank,
    gather_chunks,
    gather_uneven,
    gather_with_grad,
    world_size,
)
from spec_align.utils.logging import get_logger

__all__ = ["SpecAlignModule"]

REF_PREFIX = "ref."  # state-dict prefix of the frozen reference, never written to checkpoints
ANCHOR_PREFIX = "anchor."  # state-dict prefix of the anchor's start copy (in checkpoints)

log = get_logger(__name__)

log = get_logger(__name__)


class SpecAlignModule(LightningModule):
    """Task loss + lambda * minibatch SPEC-diff(trainable embeddings, reference embeddings).

    The reference is a frozen network (`ref`, wrapped in `FrozenEncoder`: no gradients, eval
    mode, forward under no_grad) or, with `ref=None` and `ref_dim`, the precomputed
    embeddings every batch carries under "ref". Rows are paired by construction: both sides
    embed the same images of the same batch (or the cache entry of the same sample key).

    Under DDP the task loss and the penalty see the global batch: embeddings are gathered with
    gradients (`gather_with_grad`), so the SPEC-diff estimator is the one of the global batch,
    independent of how it is split over devices.

    The reference's weights are dropped from checkpoints (`on_save_checkpoint`) and taken from
    the freshly built reference on load (`on_load_checkpoint`), so strict loading still works.
    The penalty's bandwidths and random frequencies are buffers and do go into checkpoints.
    Bandwidths are fixed by the first data the penalty sees: the first training batch, or the
    validation probe when validation runs first (Lightning's sanity check).

    Divergence stops training: a non-finite loss term (before backward), encoder output
    (before the penalty or validation metrics see it) or checkpoint tensor (before the file is
    written) raises `DivergenceError` naming the step, the term and the last good checkpoint.

    Logged keys (see `metric_names`; train/data_wait_s is the `DataWaitTimer` callback's):
    train/loss, train/task_loss (the task loss's weighted terms summed: with
    loss.task.weight=w, w times the task's own loss), train/task/<term> for each term
    (train/task/contrastive_loss, train/task/classification_loss; none for task=none),
    train/<penalty.name> (steps with the penalty active:
    train/spec_diff, train/kuea or train/kuea_frobenius), train/anchor (anchor on),
    train/samples_skipped and train/shard_errors (samples lost to corrupt data and failed shard
    reads so far, summed over ranks, see `SkipCounter`); val/spec_diff (float64 SPEC-diff of
    the exact kernels, with the penalty's bandwidths, on the fixed probe set: the first
    `probe_size` validation
    samples), val/spec_diff_features (the same with the penalty's random-feature maps),
    val/spec_diff_median (exact kernels, both bandwidths refitted on the probe each time:
    blind to the embedding's scale), val/spec_diff_best, val/task_loss and val/task/<term>,
    val/zero_shot_acc (class prompts), val/i2t_r1 and val/t2i_r1 (caption retrieval on the
    probe set), val/acc (classification head); with `probes`, val/probe/<attribute>_knn
    and val/probe/<attribute>_linear for each of `probe_attributes` (`spec_align.modules.probes`
    defines both probes) on the probe set at every validation, and
    val/probe_ref/<attribute>_knn / _linear, the same for the reference, at the first
    validation after the sanity check (the reference does not change).

    `init_from` sets the encoder's initial weights (`load_encoder_weights`) in `setup` of a
    fit, before the sanity check, the penalty's bandwidth fit or any callback's `on_fit_start`
    / `on_train_start` sees the encoder; validation alone (`trainer.validate`, eval.py) never
    reads it. A module whose weights come from a checkpoint (`load_from_checkpoint`) does not
    apply it; a fit that resumes a checkpoint (`trainer.fit(ckpt_path=...)`) restores the
    checkpoint's weights over it (Lightning restores after `setup`), and `train.run` passes
    init_from=None then, so the file need not exist any more.

    Args:
        encoder: the trainable encoder.
        task_loss: the task term (contrastive, classification or none).
        penalty: the alignment penalty (`SpectralPenalty` or `KernelMatchingPenalty`);
            unused when there is no reference.
        optimizer: partial optimizer, called with the parameter groups.
        scheduler: partial LR scheduler, called with the optimizer and `total_steps`; stepped
            every optimizer step. None: constant learning rate.
        ref: the frozen reference network; None for precomputed embeddings or no reference.
        ref_dim: width of precomputed reference embeddings (when `ref` is None); None and no
            `ref` means no reference at all (no penalty, no val/spec_diff).
        class_names: class names for zero-shot accuracy (needs a text tower); None: skipped.
        prompt_templates: zero-shot prompts with one "{}" for the class name, averaged.
        probe_size: validation samples (over all ranks) in the probe set.
        init_from: the encoder's initial weights: a spec_align .ckpt (its encoder entries),
            a torch.save(encoder.state_dict()) file or a .safetensors file; None: as built.
        probes: log the attribute probes.
        probe_attributes: attributes to probe: "label" (the class label) or keys of the
            samples' json metadata.
        anchor: mean squared distance to the encoder as fitting starts (`AnchorLoss`); its
            frozen copy is taken in `setup("fit")` and kept in checkpoints. None: off.
    """

    def __init__(
        self,
        encoder: ImageEncoder,
        task_loss: TaskLoss,
        penalty: SpectralPenalty | KernelMatchingPenalty,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[..., Any] | None = None,
        ref: ImageEncoder | None = None,
        ref_dim: int | None = None,
        class_names: Sequence[str] | None = None,
        prompt_templates: Sequence[str] = ("a photo of a {}",),
        probe_size: int = 1024,
        init_from: str | None = None,
        probes: bool = True,
        probe_attributes: Sequence[str] = ("label",),
        anchor: AnchorLoss | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=["encoder", "task_loss", "penalty", "optimizer", "scheduler", "ref", "anchor"]
        )
        if probe_size < 2:
            raise ValueError(f"probe_size must be >= 2, got {probe_size}")
        self.encoder = encoder
        self.encoder_view = ViewAdapter.for_encoder(encoder)
        self.task_loss = task_loss
        task_loss.bind(encoder)
        if encoder.has_text and not task_loss.needs_text:
            _freeze_text_tower(encoder)

        if ref is not None and not isinstance(ref, FrozenEncoder):
            ref = FrozenEncoder(ref)
        if ref is not None and ref_dim is not None and ref_dim != ref.embed_dim:
            raise ValueError(f"ref_dim={ref_dim} but the reference network gives {ref.embed_dim}")
        self.ref = ref
        self.ref_view = ViewAdapter.for_encoder(ref) if ref is not None else None
        self.ref_dim = ref.embed_dim if ref is not None else ref_dim
        self.penalty = penalty if self.ref_dim is not None else None
        if self.penalty is not None:
            self.penalty.bind(encoder.embed_dim, self.ref_dim)
        elif penalty.weight > 0:
            rank_zero_warn("no reference (ref=none): the spectral penalty is off")

        self._optimizer_factory = optimizer
        self._scheduler_factory = scheduler
        self.class_names = list(class_names) if class_names else None
        self.prompt_templates = list(prompt_templates)
        self.probe_size = int(probe_size)
        self.zero_shot = encoder.has_text and self.class_names is not None
        if self.zero_shot:
            self.val_zero_shot = MulticlassAccuracy(len(self.class_names), ignore_index=-1)
        if isinstance(task_loss, ClassificationLoss):
            self.val_acc = MulticlassAccuracy(task_loss.num_classes, ignore_index=-1)
        self.val_spec_diff_best = MinMetric()
        self._probe: dict[str, list[Tensor]] = {}
        self._class_text: Tensor | None = None
        self._warned_upsampling = False
        self.init_from = None if init_from is None else str(init_from)
        self.init_source: WeightsSource | None = None  # set when init_from has been applied
        self._init_from_done = False
        self.probe_attributes = list(probe_attributes) if probes else []
        self._probe_values: list[tuple] = []
        self._ref_probed = False
        self._warned_probes = False
        self.anchor = anchor if anchor is not None and anchor.enabled else None

    @property
    def metric_names(self) -> list[str]:
        """Keys this configuration can log (optimized_metric must be one of them)."""
        task_terms = [f"task/{name}" for name in self.task_loss.term_names]
        names = ["train/loss", "train/task_loss", *(f"train/{name}" for name in task_terms)]
        names += ["train/samples_skipped", "train/shard_errors"]
        if self.penalty is not None:
            names += [
                f"train/{self.penalty.name}",
                "val/spec_diff",
                "val/spec_diff_median",
                "val/spec_diff_best",
            ]
            if isinstance(self.penalty, SpectralPenalty):
                names.append("val/spec_diff_features")
        if self.anchor is not None:
            names.append("train/anchor")
        if self.encoder.has_text:
            names += ["val/i2t_r1", "val/t2i_r1"]
        if self.task_loss.weight > 0:
            names += ["val/task_loss", *(f"val/{name}" for name in task_terms)]
        if self.zero_shot:
            names.append("val/zero_shot_acc")
        if isinstance(self.task_loss, ClassificationLoss):
            names.append("val/acc")
        for name in self.probe_attributes:
            for probe in ("knn", "linear"):
                names.append(f"val/probe/{name}_{probe}")
                if self.ref_dim is not None:
                    names.append(f"val/probe_ref/{name}_{probe}")
        return names

    # ----------------------------------------------------------------------------- forward

    def forward(self, images: Tensor) -> Tensor:
        """Trainable embeddings of a batch of [0, 1] images.

        Shapes:
            images: (B, 3, H, W) -> (B, embed_dim)
        """
        self._check_resolution(images)
        return self.encoder(self.encoder_view(images))

    def reference(self, batch: dict[str, Any]) -> Tensor:
        """Reference embeddings of the batch's samples, without gradient.

        Shapes:
            -> (B, ref_dim) float32
        """
        if self.ref is not None:
            return self.ref(self.ref_view(batch["image"]))
        if "ref" not in batch:
            raise ValueError(
                "the configured reference is precomputed, but the batch has no 'ref' "
                "embeddings: set data.ref_cache to a cache of these shards "
                "(scripts/precompute_ref.py) or pick a reference network (ref=...)"
            )
        return batch["ref"].to(device=self.device, dtype=torch.float32)

    def _check_resolution(self, images: Tensor) -> None:
        sizes = [self.encoder_view.image_size]
        if self.ref_view is not None:
            sizes.append(self.ref_view.image_size)
        if min(images.shape[-2:]) < max(sizes) and not self._warned_upsampling:
            self._warned_upsampling = True
            rank_zero_warn(
                f"data images are {tuple(images.shape[-2:])} px but the encoders take {sizes}: "
                "they are upsampled; raise data.image_size to the largest encoder size"
            )

    def _text_features(self, texts: Sequence[str]) -> Tensor:
        tokens = self.encoder.tokenizer(list(texts)).to(self.device)
        return self.encoder.encode_text(tokens)

    # ------------------------------------------------------------------------ initial weights

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.init_from is not None and not self._init_from_done:
            self.init_source = load_encoder_weights(self.encoder, self.init_from)
            log.info(
                "encoder initialised from %s (sha256 %s, %d tensors)",
                self.init_source.path,
                self.init_source.sha256,
                self.init_source.tensors,
            )
            for logger in self.loggers:
                logger.log_hyperparams({"init_from_sha256": self.init_source.sha256})
        # Once per module: a second fit continues from the trained weights.
        self._init_from_done = True
        # The anchor's copy: after the initial weights, before a checkpoint is restored (which
        # then overwrites the copy with the run's own start) and before the strategy moves the
        # module to its device.
        if stage == "fit" and self.anchor is not None:
            self.anchor.snapshot(self.encoder)

    # ---------------------------------------------------------------------------- training

    def compute_losses(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        """All loss terms of one training batch, on the global batch under DDP.

        Returns:
            dict with "loss" (weighted total), "task_loss" (the task's weighted terms
            summed), "task/<term>" for each of them, "anchor" (anchor on) and, on steps
            where the penalty is active, the penalty's `name` ("spec_diff", ...).
        """
        z = self(batch["image"])
        text = labels = None
        if self.task_loss.needs_text:
            text = gather_with_grad(self._text_features(batch["text"]))
        if self.task_loss.needs_labels:
            labels = gather_uneven(batch["label"].to(self.device))
        z_all = gather_with_grad(z)
        terms = self.task_loss(
            z_all,
            text_features=text,
            labels=labels,
            logit_scale=getattr(self.encoder, "logit_scale", None),
        )
        out = _task_values(terms, z_all)
        loss = out["task_loss"]
        penalty = self.penalty
        if penalty is not None and (penalty.active(step) or not penalty.fitted):
            # The penalty's fit and solve reject NaN embeddings as bad samples: a diverged
            # encoder must read as divergence. (Their own check synchronises just the same.)
            check_finite_embeddings(
                z_all, self._encoder_state(), step, "the training batch", self._trainer
            )
            ref_all = gather_uneven(self.reference(batch))
            penalty.fit(z_all.detach(), ref_all)
            if penalty.active(step):
                out[penalty.name] = penalty(z_all, ref_all, step=step).to(z.dtype)
                loss = loss + penalty.weight * out[penalty.name]
        if self.anchor is not None:
            start = self.anchor.start_embeddings(self.encoder_view(batch["image"]))
            out["anchor"] = self.anchor(z_all, gather_uneven(start)).to(z.dtype)
            loss = loss + self.anchor.weight * out["anchor"]
        out["loss"] = loss
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.compute_losses(batch, self.global_step)
        # Before backward: a non-finite loss never reaches the weights. Global-batch values,
        # so every rank raises here together and none is left waiting in a collective.
        check_finite_losses(out, self.global_step, self._trainer)
        size = batch["image"].shape[0]
        # Values are global-batch quantities already (identical on every rank): no sync.
        for name, value in out.items():
            self.log(
                f"train/{name}", value, on_epoch=True, prog_bar=name == "loss", batch_size=size
            )
        # Each rank's loader counts its own shards (whole run so far): the run's total is the sum.
        for name in ("samples_skipped", "shard_errors"):
            self.log(
                f"train/{name}",
                float(batch.get(name, 0)),
                on_step=True,
                sync_dist=True,
                reduce_fx="sum",
                batch_size=size,
            )
        return out["loss"]

    def on_train_start(self) -> None:
        # The sanity check's value is not a result of training.
        self.val_spec_diff_best.reset()

    # -------------------------------------------------------------------------- validation

    @torch.no_grad()
    def _class_embeddings(self) -> Tensor:
        """Unit text embedding per class, averaged over the prompt templates, (C, D)."""
        prompts = [t.format(name) for name in self.class_names for t in self.prompt_templates]
        text = F.normalize(self._text_features(prompts), dim=-1)
        text = text.view(len(self.class_names), len(self.prompt_templates), -1).mean(dim=1)
        return F.normalize(text, dim=-1)

    def on_validation_epoch_start(self) -> None:
        self._probe = {"enc": [], "ref": [], "text": [], "caption": []}
        self._probe_values = []
        self._class_text = self._class_embeddings() if self.zero_shot else None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        z = self(batch["image"])
        labels = batch["label"].to(self.device)
        size = z.shape[0]
        has_captions = self.encoder.has_text and all(batch["text"])
        text = self._text_features(batch["text"]) if has_captions else None
        if self.zero_shot:
            self.val_zero_shot.update(F.normalize(z, dim=-1) @ self._class_text.T, labels)
        if isinstance(self.task_loss, ClassificationLoss):
            self.val_acc.update(self.task_loss.logits(z), labels)
        if self.task_loss.weight > 0 and (text is not None or not self.task_loss.needs_text):
            terms = self.task_loss(
                z,
                text_features=text,
                labels=labels,
                logit_scale=getattr(self.encoder, "logit_scale", None),
            )
            for name, value in _task_values(terms, z).items():
                self.log(f"val/{name}", value, on_epoch=True, sync_dist=True, batch_size=size)
        self._collect_probe(batch, z, text)

    def _collect_probe(self, batch: dict[str, Any], z: Tensor, text: Tensor | None) -> None:
        # Each rank keeps its first share of the ordered validation stream: a fixed set.
        share = -(-self.probe_size // world_size())
        room = share - sum(len(e) for e in self._probe["enc"])
        if room <= 0:
            return
        rows = slice(0, min(room, z.shape[0]))
        self._probe["enc"].append(z[rows].float())
        if self.probe_attributes:
            self._probe_values += attribute_values(batch, self.probe_attributes)[rows]
        if self.ref_dim is not None:
            self._probe["ref"].append(self.reference(batch)[rows].float())
        if text is not None:
            self._probe["text"].append(text[rows].float())
            captions = batch["text"][rows]
            ids = [zlib.crc32(c.encode("utf-8")) for c in captions]
            self._probe["caption"].append(torch.tensor(ids, device=self.device))

    def on_validation_epoch_end(self) -> None:
        if self.zero_shot:
            self.log("val/zero_shot_acc", self.val_zero_shot)
        if isinstance(self.task_loss, ClassificationLoss):
            self.log("val/acc", self.val_acc)
        probe = {key: self._probe.get(key, []) for key in ("enc", "ref", "text", "caption")}
        self._probe = {}
        # Collectives from here on, taken by every rank, also one whose share of the ordered
        # validation stream held no probe rows: a rank that skipped them would hang the rest.
        if not any_rank(bool(probe["enc"]), self.device):
            return
        enc = self._gather_probe(probe["enc"])
        # Gathered, so identical on every rank: all raise together. Checked before the
        # penalty's evaluation, which would take NaN embeddings for bad data.
        check_finite_embeddings(
            enc,
            self._encoder_state(),
            self.global_step,
            "the validation probe",
            self._trainer,
        )
        # Probe metrics are computed from gathered tensors, identical on every rank: no sync.
        if self.penalty is not None:
            ref = self._gather_probe(probe["ref"])
            self.penalty.fit(enc, ref)
            values = self.penalty.evaluate(enc, ref)
            value = torch.tensor(values["exact"], device=self.device)
            self.val_spec_diff_best.update(value)
            self.log("val/spec_diff", value)
            if "features" in values:
                self.log("val/spec_diff_features", values["features"])
            self.log("val/spec_diff_median", values["median"])
            self.log("val/spec_diff_best", self.val_spec_diff_best.compute())
        self._log_attribute_probes(enc, probe["ref"])
        # Retrieval needs captions for every probe row of every rank.
        if all_ranks(len(probe["text"]) == len(probe["enc"]), self.device):
            text = self._gather_probe(probe["text"])
            captions = self._gather_probe(probe["caption"], ndim=1, dtype=torch.long)
            i2t, t2i = retrieval_recall_at_1(enc, text, captions)
            self.log("val/i2t_r1", i2t)
            self.log("val/t2i_r1", t2i)

    def _log_attribute_probes(self, enc: Tensor, ref_chunks: list[Tensor]) -> None:
        """val/probe/... of the gathered probe embeddings; val/probe_ref/... once."""
        values, self._probe_values = self._probe_values, []
        # The sanity check's few batches are not the probe set, and its logs are dropped.
        sanity_check = self._trainer is not None and self._trainer.sanity_checking
        if not self.probe_attributes or sanity_check:
            return
        # Gathered like the embeddings (rank order, first probe_size rows): rows stay aligned.
        values = gather_objects(values)[: self.probe_size]
        columns = {
            name: [row[i] for row in values] for i, name in enumerate(self.probe_attributes)
        }
        results = attribute_probes(enc, columns)
        logged = {f"val/probe/{key}": value for key, value in results.items()}
        if self.ref_dim is not None and not self._ref_probed:
            self._ref_probed = True
            ref = attribute_probes(self._gather_probe(ref_chunks), columns)
            logged.update({f"val/probe_ref/{key}": value for key, value in ref.items()})
        for key, value in logged.items():
            self.log(key, value)
        absent = [n for n in self.probe_attributes if f"{n}_knn" not in results]
        if absent and not self._warned_probes:
            self._warned_probes = True
            rank_zero_warn(
                f"attribute probes: {absent} have fewer than 2 values among the probe set's "
                "samples (label: `cls`; other names: keys of the samples' json metadata), "
                "so they are not logged; set model.probe_attributes to attributes the "
                "validation data has, or model.probes=false"
            )

    def _gather_probe(
        self, chunks: list[Tensor], ndim: int = 2, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """The first `probe_size` rows over all ranks (a collective)."""
        return gather_chunks(chunks, ndim, dtype, self.device)[: self.probe_size]

    # --------------------------------------------------------------------------- optimizer

    def configure_optimizers(self) -> Any:
        """AdamW-style groups: no weight decay on gains, biases and the temperature (ndim < 2)."""
        decay, no_decay = [], []
        for parameter in self.parameters():
            if parameter.requires_grad:
                (decay if parameter.ndim >= 2 else no_decay).append(parameter)
        optimizer = self._optimizer_factory(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        )
        if self._scheduler_factory is None:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = self._scheduler_factory(optimizer, total_steps=total_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # -------------------------------------------------------------------------- checkpoint

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen reference (rebuilt from the config); refuse non-finite weights.

        Lightning calls this hook before the file is written, on every rank, also for
        weights-only checkpoints: raising `DivergenceError` here means no file.
        """
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith(REF_PREFIX)}
        check_finite_state(checkpoint, self.global_step, self._trainer)

    def _encoder_state(self) -> list[tuple[str, Tensor]]:
        # What a checkpoint holds: non-persistent buffers may be -inf by design (attn_mask).
        return list(self.encoder.state_dict(prefix="encoder.").items())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Supply the rebuilt reference's weights so that strict loading accepts the file;
        fit the anchor's start copy to the file (see `AnchorLoss.adapt_state`).

        The checkpoint's encoder weights replace any initial ones: init_from is not applied
        to a module loaded from a checkpoint.
        """
        self._init_from_done = True
        if self.ref is not None:
            reference = {REF_PREFIX + k: v for k, v in self.ref.state_dict().items()}
            checkpoint["state_dict"] = {**checkpoint["state_dict"], **reference}
        state = checkpoint["state_dict"]
        if self.anchor is not None:
            state = self.anchor.adapt_state(state, ANCHOR_PREFIX, self.encoder, "encoder.")
        else:  # the anchor is off: a stored start copy has nowhere to go
            state = {k: v for k, v in state.items() if not k.startswith(ANCHOR_PREFIX)}
        checkpoint["state_dict"] = state


@torch.no_grad()
def retrieval_recall_at_1(
    image_features: Tensor, text_features: Tensor, caption_ids: Tensor
) -> tuple[Tensor, Tensor]:
    """Image->text and text->image recall@1 among paired samples.

    A retrieval counts as correct when the retrieved item's caption is the query's own
    caption text: datasets with templated captions repeat captions, and every copy is an
    equally right answer.

    Shapes:
        image_features: (n, D), text_features: (n, D), caption_ids: (n,) -> (), ()
    """
    similarity = F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    i2t = (caption_ids[similarity.argmax(dim=1)] == caption_ids).float().mean()
    t2i = (caption_ids[similarity.argmax(dim=0)] == caption_ids).float().mean()
    return i2t, t2i


def _freeze_text_tower(encoder: ImageEncoder) -> None:
    """Freeze everything of a CLIP-style encoder outside its image tower.

    Tasks without text never reach those parameters; frozen, they stay out of the optimizer
    and DDP does not wait for gradients that never come.
    """
    image_tower = getattr(getattr(encoder, "model", None), "visual", None)
    if image_tower is None:
        return
    keep = {id(p) for p in image_tower.parameters()}
    for parameter in encoder.parameters():
        if id(parameter) not in keep:
            parameter.requires_grad_(False)


def _task_values(terms: dict[str, Tensor], like: Tensor) -> dict[str, Tensor]:
    """The task's logged values: "task_loss", its weighted terms summed, and "task/<term>"
    for each. A task without terms (task=none) gives a zero that is still part of `like`'s
    graph, so a loss without a penalty step still has a backward."""
    total = torch.stack(list(terms.values())).sum() if terms else like.sum() * 0.0
    return {"task_loss": total, **{f"task/{name}": value for name, value in terms.items()}}
