"""Watch differential clusters during training: SPEC of a fixed probe set, logged and saved."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from spec_align import wandb_workspace as keys
from spec_align.callbacks.mode_tracking import Mode, ModeTracker
from spec_align.callbacks.probe import Probe, embed_probe, read_probe
from spec_align.explain.figures import (
    embedding_maps,
    image_grid,
    mode_membership,
    project_2d,
    save_png,
    spectrum_plot,
    thumbnail_strip,
    tracks_plot,
)
from spec_align.explain.modes import (
    class_name,
    dominant_attribute,
    label_purity,
    labelled_share,
    mode_records,
)
from spec_align.explain.stability import mode_stability
from spec_align.losses.divergence import check_finite_embeddings
from spec_align.spectrum import SpecResult, compare, estimate_sigma
from spec_align.spectrum.validation import KERNELS

__all__ = ["DIRECTIONS", "ClusterLogCallback"]

# Key segment of each sign of the spectrum of (K_encoder - eta * K_reference).
DIRECTIONS = ("enc_minus_ref", "ref_minus_enc")
_DIRECTION_LABELS = (
    "encoder - reference (clusters only the encoder forms)",
    "reference - encoder (clusters only the reference forms)",
)
_TABLE_THUMBNAILS = 8  # samples per table row: enough to see the cluster, small to upload
_GRID_COLUMNS = 4  # tiles per row of a mode's grid (grid_samples=16: four by four)


class ClusterLogCallback(Callback):
    """SPEC differential clusters of the trainable encoder vs the reference, over training.

    At each evaluation the callback embeds a fixed probe set (the first `probe_size` validation
    samples, read once and cached) with the module's trainable encoder (`module(images)`) and
    its reference (`module.reference(batch)`), in eval mode under no_grad, then runs one
    `spec_align.compare` of the two: its positive modes are clusters the encoder forms and
    the reference does not, its negative modes the reverse. Modes are matched to those of
    earlier evaluations by what they are, on the same probe samples: the overlap of their top
    `cluster_size` samples and the correlation of their eigenvectors (`ModeTracker`), so a
    cluster keeps its tracked id while it persists (also when it fades, changes rank or
    briefly drops out of the top_k) and gets a new one only when no earlier mode matches.

    Training is unaffected: parameters, optimizer and data state are only read, every
    submodule's train/eval flag is restored, and the Python, NumPy and torch RNG states are
    restored after the probe is read and analysed. Every rank reads and embeds its share of
    the probe (the gathers are collectives); SPEC, rendering and logging run on rank zero.

    Logged through every logger of the trainer, at step `trainer.global_step` (eigenvalues are
    signed: positive for enc_minus_ref, negative for ref_minus_enc):

    - `clusters/spec_diff`: the operator norm of the difference kernel.
    - `clusters/<direction>/eig_<i>`, i < top_k: the i-th eigenvalue of that end of the
      spectrum (0 where it has fewer modes); <direction> is enc_minus_ref or ref_minus_enc.
    - `clusters/<direction>/num_modes`: modes above SPEC's zero tolerance (at most top_k).
    - `clusters/tracked/<id>/eigenvalue`: eigenvalue of tracked mode <id>, while it exists.

    Only to `WandbLogger`s (W&B media; nothing happens without one):

    - `clusters/tracked_eigenvalues`: one line-series chart of every tracked mode's
      eigenvalue over steps (one line per id; its data is the table
      `clusters/tracked_eigenvalues_table`).
    - `clusters/spectrum`: image, both ends of the spectrum by rank.
    - `clusters/mode/<id>/grid`: image, captioned grid of the top `grid_samples` samples of
      tracked mode <id>, for the `grid_modes` strongest modes of each direction; keyed by
      id, so the step slider shows one cluster evolving.
    - `clusters/map`: image, 2-D layouts of the probe set in each embedding, side by side,
      coloured by mode membership.
    - `clusters/modes`: one incremental table for the run (`log_mode="INCREMENTAL"`: each
      evaluation appends its rows), one row per mode: step, direction, rank, tracked_id,
      eigenvalue, match_similarity (with the mode it continues; empty for a new id),
      dominant (most enriched metadata value among the members), purity (its
      share), label and label_purity (most common label among the labelled members and its
      share of them, as in the report), labelled (share of members with a label),
      thumbnails (top samples as one strip), captions.

    Written under `dirpath` on rank zero (readable without W&B):
    `step_<step:07d>/{spectrum.png, map.png, <direction>_mode_<r>.png, modes.json}` per
    evaluation, plus `tracks.png` (tracked eigenvalues over steps) and `history.jsonl` (one
    line per evaluation) for the whole run.

    The probe's images are kept in host memory as the loader produced them
    (probe_size x 3 x H x W floats: 50 MB for 1024 samples at 64 px).

    Args:
        every_n_steps: evaluate after every n-th optimizer step.
        every_n_epochs: evaluate after every n-th training epoch. Give at most one of the two;
            neither means every epoch.
        at_start: also evaluate when training starts (the untrained baseline).
        probe_size: validation samples in the probe set (all ranks together).
        top_k: modes kept at each end of the spectrum (scalars, tracking, table).
        grid_modes: modes per direction drawn as grids and coloured in the map.
        grid_samples: top samples per grid.
        cluster_size: top samples of a mode that count as its members (tracking overlap,
            purity, map colours).
        match_threshold: least similarity for a mode to continue an earlier one's id: the
            mean of the Jaccard overlap of their members and the absolute correlation of
            their eigenvectors on the probe set (both in [0, 1]).
        match_memory: evaluations a mode that was not found (it fell out of the top_k)
            stays matchable, so it keeps its id when it comes back.
        stability_resamples: SPEC reruns on random halves of the probe per evaluation
            (`spec_align.explain.mode_stability`): each mode's reappearance in modes.json and
            the table, and the noise floor as clusters/<direction>/noise_floor. 0: off.
        kernel: "gaussian" or "cosine" (see `spec_align.compare`).
        eta: weight of the reference kernel.
        rff_dim: random Fourier features per side; None: the exact kernel (probe_size
            squared memory, fine up to a few thousand samples).
        normalize: unit-normalise both embeddings first, so norm drift during training does
            not change the kernel. The Gaussian bandwidths are half the median distance on
            the whole probe, fixed at the first evaluation. They are deliberately not the
            training penalty's: those are fitted on whatever the penalty saw first (the sanity
            check's first batches, split by rank under DDP, or the first training batch), so
            the analysis would depend on the world size; with its own, the callback's
            evaluation is the same on 1 or N processes.
        map_method: "pca" or "tsne" for the 2-D map.
        thumbnail_size: side in pixels of the thumbnails kept for grids and tables.
        dirpath: directory of the on-disk artefacts; None: `<default_root_dir>/clusters`.
        seed: seed of the bandwidth subsample, random features and t-SNE.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        at_start: bool = True,
        probe_size: int = 1024,
        top_k: int = 5,
        grid_modes: int = 3,
        grid_samples: int = 16,
        cluster_size: int = 50,
        match_threshold: float = 0.3,
        match_memory: int = 2,
        stability_resamples: int = 0,
        kernel: str = "gaussian",
        eta: float = 1.0,
        rff_dim: int | None = None,
        normalize: bool = True,
        map_method: str = "pca",
        thumbnail_size: int = 64,
        dirpath: str | os.PathLike | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_epochs is not None:
            raise ValueError("give every_n_steps or every_n_epochs, not both")
        counts = {
            "every_n_steps": every_n_steps,
            "every_n_epochs": every_n_epochs,
            "top_k": top_k,
            "grid_samples": grid_samples,
            "cluster_size": cluster_size,
            "thumbnail_size": thumbnail_size,
        }
        for name, value in counts.items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(stability_resamples, bool) or not (
            isinstance(stability_resamples, int) and stability_resamples >= 0
        ):
            raise ValueError(
                f"stability_resamples must be an int >= 0, got {stability_resamples!r}"
            )
        if not 0 <= grid_modes <= top_k:
            raise ValueError(f"grid_modes must be in [0, top_k={top_k}], got {grid_modes}")
        if probe_size < 2 * top_k:
            raise ValueError(f"probe_size={probe_size} must be at least 2 * top_k={2 * top_k}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        if map_method not in ("pca", "tsne"):
            raise ValueError(f"map_method must be 'pca' or 'tsne', got {map_method!r}")
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs if every_n_steps is None else None
        if self.every_n_steps is None and self.every_n_epochs is None:
            self.every_n_epochs = 1
        self.at_start = at_start
        self.probe_size = probe_size
        self.top_k = top_k
        self.grid_modes = grid_modes
        self.grid_samples = grid_samples
        self.cluster_size = cluster_size
        self.kernel = kernel
        self.eta = eta
        self.rff_dim = rff_dim
        self.normalize = normalize
        self.map_method = map_method
        self.thumbnail_size = thumbnail_size
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.seed = seed
        self.tracker = ModeTracker(match_threshold, match_memory)
        self.stability_resamples = stability_resamples
        self.history: list[dict[str, Any]] = []
        self._sigmas: tuple[float, float] | None = None
        self._last_step: int | None = None
        self._probe: Probe | None = None
        self._enabled = True
        # The growing modes table of each W&B run logged to: id(run) -> (run, table).
        self._tables: dict[int, tuple[Any, Any]] = {}

    # ------------------------------------------------------------------------------- hooks

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "reference", None)):
            raise TypeError(
                f"ClusterLogCallback needs a module with reference(batch) -> embeddings; "
                f"{type(pl_module).__name__} has none"
            )
        # A SpecAlignModule without any reference (ref=none) has nothing to compare against.
        self._enabled = getattr(pl_module, "ref_dim", 0) is not None
        if not self._enabled:
            rank_zero_warn("ClusterLogCallback: the module has no reference; it logs nothing")
        if self.dirpath is None:
            self.dirpath = Path(trainer.default_root_dir) / "clusters"

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_start:
            self._evaluate(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps is not None and step > 0 and step % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        every = self.every_n_epochs
        if every is not None and (trainer.current_epoch + 1) % every == 0:
            self._evaluate(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        """Tracked ids, fixed bandwidths and the per-evaluation history (resume continues)."""
        return {
            "tracker": self.tracker.state_dict(),
            "history": self.history,
            "sigmas": self._sigmas,
            "last_step": self._last_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state_dict["tracker"])
        self.history = list(state_dict["history"])
        self._sigmas = None if state_dict["sigmas"] is None else tuple(state_dict["sigmas"])
        self._last_step = state_dict["last_step"]

    # -------------------------------------------------------------------------- evaluation

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule) -> None:
        step = trainer.global_step
        # Once per step: gradient accumulation calls the batch hook several times per step.
        if not self._enabled or step == self._last_step:
            return
        self._last_step = step
        with _preserved_rng_state(), _eval_mode(pl_module), torch.no_grad():
            if self._probe is None:
                self._probe = self._read_probe(trainer, pl_module)
            encoder, reference = self._embed(trainer, pl_module)
            # On every rank (the embeddings are gathered): all stop together, and the
            # analysis never takes a diverged encoder's NaN for bad samples.
            check_finite_embeddings(
                encoder,
                pl_module.state_dict().items(),  # not non-persistent buffers (-inf masks)
                step,
                "the cluster probe",
                trainer,
            )
            if trainer.is_global_zero:
                self._analyse(trainer, encoder, reference, step)

    def _read_probe(self, trainer: Trainer, pl_module: LightningModule) -> Probe:
        source = trainer.datamodule if trainer.datamodule is not None else pl_module
        loader = source.val_dataloader()
        if isinstance(loader, list | tuple):
            loader = loader[0] if loader else None
        if loader is None:
            raise ValueError("ClusterLogCallback needs validation data for its probe set")
        probe = read_probe(
            loader,
            self.probe_size,
            thumbnail_size=self.thumbnail_size,
            device=pl_module.device,
            class_names=getattr(pl_module, "class_names", None),
        )
        if len(probe) < 2 * self.top_k:
            raise ValueError(
                f"the probe set has {len(probe)} samples; ClusterLogCallback needs at least "
                f"2 * top_k = {2 * self.top_k} validation samples"
            )
        return probe

    def _embed(self, trainer: Trainer, pl_module: LightningModule) -> tuple[Tensor, Tensor]:
        # The trainer's precision context (autocast, true half precision) as in its steps.
        with trainer.precision_plugin.forward_context():
            return embed_probe(self._probe, pl_module, pl_module.reference, pl_module.device)

    def _analyse(self, trainer: Trainer, encoder: Tensor, reference: Tensor, step: int) -> None:
        x, y = encoder.double(), reference.double()
        if self.normalize:
            x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
        if self._sigmas is None and self.kernel == "gaussian":
            # Fixed at the first evaluation: a later eigenvalue then differs only because
            # the embeddings did, not because the bandwidth followed them.
            self._sigmas = (estimate_sigma(x, seed=self.seed), estimate_sigma(y, seed=self.seed))
        sigma_x, sigma_y = self._sigmas or (1.0, 1.0)
        result = compare(
            x,
            y,
            kernel=self.kernel,
            sigma_x=sigma_x,
            sigma_y=sigma_y,
            eta=self.eta,
            rff_dim=self.rff_dim,
            top_k=self.top_k,
            seed=self.seed,
            names=("encoder", "reference"),
        )
        if self.stability_resamples:
            result.stability = mode_stability(
                x, y, result, resamples=self.stability_resamples, seed=self.seed
            )
        modes = self._describe_modes(result)
        tracks = self.tracker.update(
            [Mode(m["direction"], m["member_keys"], m["scores"]) for m in modes]
        )
        for mode, track in zip(modes, tracks, strict=True):
            mode["tracked_id"] = track.id
            mode["match_similarity"] = track.similarity
            mode["match_overlap"] = track.overlap
            mode["match_correlation"] = track.correlation
            mode["step"] = step
        scalars = _scalars(result, modes, self.top_k)
        self.history.append(
            {
                "step": step,
                "epoch": trainer.current_epoch,
                "spec_diff": result.spec_diff,
                "tracked": {m["tracked_id"]: m["eigenvalue"] for m in modes},
            }
        )
        images = self._render(result, modes, x, y, step)
        self._write(step, trainer.current_epoch, result, modes, images)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                media = self._wandb_media(logger, images, modes)
                logger.log_metrics({**scalars, **media}, step=step)
            else:
                logger.log_metrics(scalars, step=step)

    def _wandb_media(
        self, logger: WandbLogger, images: dict[str, np.ndarray], modes: list[dict]
    ) -> dict[str, Any]:
        import wandb

        media: dict[str, Any] = {
            keys.SPECTRUM: wandb.Image(images["spectrum"]),
            keys.MAP: wandb.Image(images["map"]),
            keys.TRACKED_CHART: _tracked_chart(self.history),
        }
        for mode in modes:
            name = f"{mode['direction']}_mode_{mode['rank']}"
            if name in images:  # keyed by id: the step slider follows one cluster
                media[keys.mode_grid(mode["tracked_id"])] = wandb.Image(
                    images[name],
                    caption=f"tracked id {mode['tracked_id']}: {_short(mode)}, "
                    f"eigenvalue {mode['eigenvalue']:+.3g}, step {mode['step']}",
                )
        # One table per W&B run that grows by this evaluation's rows (wandb allows an
        # incremental table to be logged to one run only; a resumed run's wandb continues
        # the increments already logged under the key).
        run = logger.experiment
        if id(run) not in self._tables:
            self._tables[id(run)] = (
                run,
                wandb.Table(columns=_TABLE_COLUMNS, log_mode="INCREMENTAL"),
            )
        table = self._tables[id(run)][1]
        for mode in modes:
            table.add_data(*_table_row(mode, self._probe.thumbnails))
        media[keys.MODES_TABLE] = table
        return media

    def _describe_modes(self, result: SpecResult) -> list[dict[str, Any]]:
        probe = self._probe
        modes = []
        for record in mode_records(result, self.cluster_size):
            members = record["top_samples"]
            top = members[: self.grid_samples]
            labels = [probe.labels[i] for i in members]
            dominant, purity = dominant_attribute(members, probe.meta)
            label, share = label_purity(labels)
            modes.append(
                {
                    "direction": DIRECTIONS[record["sign"] == "negative"],
                    "rank": record["rank"],
                    "eigenvalue": record["eigenvalue"],
                    "dominant": dominant,
                    "purity": purity,
                    "label": None
                    if label is None
                    else class_name(label, probe.class_names) or str(label),
                    "label_purity": share,
                    "labelled": labelled_share(labels),
                    "top_samples": top,
                    "top_keys": [probe.keys[i] for i in top],
                    "top_captions": [probe.captions[i] for i in top],
                    "top_scores": record["top_scores"][: self.grid_samples],
                    "members": members,
                    "member_keys": [probe.keys[i] for i in members],
                    "scores": result.scores[:, record["mode"]].cpu().numpy(),
                    "reappearance": None
                    if result.stability is None
                    else result.stability.reappearance[record["mode"]],
                }
            )
        return modes

    def _render(
        self, result: SpecResult, modes: list[dict], x: Tensor, y: Tensor, step: int
    ) -> dict[str, np.ndarray]:
        thumbnails = self._probe.thumbnails
        negative = result.num_modes - result.num_positive
        images = {
            "spectrum": spectrum_plot(
                result.eigenvalues.cpu().numpy(),
                result.num_positive,
                negative,
                labels=_DIRECTION_LABELS,
                title=f"SPEC spectrum, step {step}, SPEC-diff {result.spec_diff:.4g}",
            )
        }
        shown = [m for m in modes if m["rank"] < self.grid_modes]
        for mode in shown:
            images[f"{mode['direction']}_mode_{mode['rank']}"] = image_grid(
                thumbnails[mode["top_samples"]],
                mode["top_captions"],
                title=_mode_title(mode, step),
                columns=_GRID_COLUMNS,
            )
        membership = mode_membership(
            [m["members"] for m in shown], [m["eigenvalue"] for m in shown], len(thumbnails)
        )
        images["map"] = embedding_maps(
            [project_2d(z.cpu().numpy(), self.map_method, self.seed) for z in (x, y)],
            [f"encoder ({self.map_method.upper()})", f"reference ({self.map_method.upper()})"],
            membership,
            [f"{_short(m)} (id {m['tracked_id']})" for m in shown],
            [DIRECTIONS.index(m["direction"]) for m in shown],
            f"probe set coloured by mode membership (top {self.cluster_size}), step {step}",
        )
        return images

    def _write(
        self,
        step: int,
        epoch: int,
        result: SpecResult,
        modes: list[dict],
        images: dict[str, np.ndarray],
    ) -> None:
        folder = self.dirpath / f"step_{step:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, image in images.items():
            save_png(image, folder / f"{name}.png")
        record = {
            "step": step,
            "epoch": epoch,
            "spec_diff": result.spec_diff,
            "kernel": result.kernel,
            "eta": result.eta,
            "sigma_encoder": result.sigma_x,
            "sigma_reference": result.sigma_y,
            "num_samples": result.num_samples,
            "spectrum_top": result.eigenvalues[: 3 * self.top_k].tolist(),
            "spectrum_bottom": result.eigenvalues.flip(0)[: 3 * self.top_k].tolist(),
            "modes": [
                {k: v for k, v in m.items() if k not in ("members", "scores")} for m in modes
            ],
        }
        (folder / "modes.json").write_text(json.dumps(record, indent=1) + "\n")
        with open(self.dirpath / "history.jsonl", "a") as handle:
            handle.write(json.dumps(self.history[-1]) + "\n")
        save_png(
            tracks_plot(self.history, "tracked modes: eigenvalue over training (label: id)"),
            self.dirpath / "tracks.png",
        )


# --------------------------------------------------------------------------------- helpers


@contextmanager
def _preserved_rng_state() -> Iterator[None]:
    """Restore every RNG training uses: creating a DataLoader iterator draws from torch's."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode inside, then each submodule's own previous flag (frozen parts stay eval)."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for submodule, training in flags:
            submodule.training = training


def _short(mode: dict) -> str:
    arrow = "enc-ref" if mode["direction"] == DIRECTIONS[0] else "ref-enc"
    return f"{arrow} #{mode['rank']}"


def _mode_title(mode: dict, step: int) -> str:
    direction = _DIRECTION_LABELS[DIRECTIONS.index(mode["direction"])]
    title = (
        f"{direction}\nmode {mode['rank']} (tracked id {mode['tracked_id']}), "
        f"eigenvalue {mode['eigenvalue']:+.4g}, step {step}"
    )
    if mode["dominant"] is not None:
        title += f"\nmost enriched: {mode['dominant']} ({mode['purity']:.0%} of top "
        title += f"{len(mode['members'])})"
    return title


def _scalars(result: SpecResult, modes: list[dict], top_k: int) -> dict[str, float]:
    scalars = {keys.SPEC_DIFF: float(result.spec_diff)}
    counts = (result.num_positive, result.num_modes - result.num_positive)
    # Each end of the spectrum, clipped at zero: past its modes an end holds (near) zeros or
    # the other sign's eigenvalues, which are not clusters of this direction.
    ends = (result.eigenvalues.clamp_min(0.0), result.eigenvalues.flip(0).clamp_max(0.0))
    for direction, count, values in zip(DIRECTIONS, counts, ends, strict=True):
        scalars[keys.num_modes(direction)] = float(count)
        for i in range(top_k):
            value = float(values[i]) if i < len(values) else 0.0
            scalars[keys.eigenvalue(direction, i)] = value
    for mode in modes:
        scalars[keys.tracked_eigenvalue(mode["tracked_id"])] = mode["eigenvalue"]
    if result.stability is not None:
        for direction, floor in zip(DIRECTIONS, result.stability.noise_floor, strict=True):
            scalars[keys.noise_floor(direction)] = float(floor)
    return scalars


_TABLE_COLUMNS = [
    "step",
    "direction",
    "rank",
    "tracked_id",
    "eigenvalue",
    "match_similarity",
    "reappearance",
    "dominant",
    "purity",
    "label",
    "label_purity",
    "labelled",
    "thumbnails",
    "captions",
]


def _table_row(mode: dict, thumbnails: np.ndarray) -> list:
    import wandb

    top = mode["top_samples"][:_TABLE_THUMBNAILS]
    return [
        mode["step"],
        mode["direction"],
        mode["rank"],
        mode["tracked_id"],
        mode["eigenvalue"],
        mode["match_similarity"],
        mode["reappearance"],
        mode["dominant"],
        mode["purity"],
        mode["label"],
        mode["label_purity"],
        mode["labelled"],
        wandb.Image(thumbnail_strip(thumbnails[top])),
        " | ".join(mode["top_captions"][:_TABLE_THUMBNAILS]),
    ]


def _tracked_chart(history: list[dict]) -> Any:
    """All tracked modes' eigenvalues over steps as one W&B line-series chart (one line per id)."""
    import wandb

    series: dict[int, tuple[list[int], list[float]]] = {}
    for entry in history:
        for mode_id, value in entry["tracked"].items():
            steps, values = series.setdefault(int(mode_id), ([], []))
            steps.append(entry["step"])
            values.append(value)
    ids = sorted(series)
    return wandb.plot.line_series(
        xs=[series[i][0] for i in ids],
        ys=[series[i][1] for i in ids],
        # The direction is fixed per id (modes match only within one): its eigenvalue's sign.
        keys=[f"id {i} ({'enc-ref' if series[i][1][-1] > 0 else 'ref-enc'})" for i in ids],
        title="tracked modes: eigenvalue over training",
        xname="step",
    )
