"""Overhead of the SPEC-align penalty: training-step time with lambda > 0 over lambda = 0.

    python scripts/bench_penalty.py                       # every part, on the CPU
    python scripts/bench_penalty.py --parts step --device cuda --models vit-b-32 --steps 20

Settings are the penalty options the README recommends, read from conf/loss/: `default`
(gaussian.yaml: 2048 fresh frequencies per step, random-feature covariances), its documented
alternatives `fixed_frequencies`, `exact` (the batch's B x B kernels) and `batch_bandwidth`,
and `cosine` (cosine.yaml). Three parts:

- step: the module's full training step outside Lightning (embeddings, contrastive loss,
  penalty when on, backward, AdamW), lambda > 0 and lambda = 0 interleaved step by step in
  one process, so machine load affects both alike; median step time of each.
- increment: the penalty alone, forward and backward, on leaf embeddings of a model's widths
  at batch 256 and at a global batch of 1024. It is what lambda > 0 adds to a step: the
  encoder's backward runs either way, and the penalty only adds its gradient at the
  embeddings. Where a full step is too slow to repeat (ViT-B-32 on this CPU), the ratio is
  estimated as 1 + increment / (lambda = 0 step) and labelled so.
- ddp: a Lightning fit under DDP on 2 CPU processes over gloo (conf/trainer/ddp_sim.yaml),
  tiny CLIP, global batch 1024 (512 per process): the penalty runs on the gathered global
  batch on every rank. lambda alternates by step; rank 0 times each batch (hook to hook).

The reference embeddings are precomputed random vectors of the reference's width (1280 for
EfficientNet-Lite0 next to the tiny model, 768 for DINOv2 ViT-B/14 next to ViT-B-32), so the
ratio measures the penalty itself; a reference network's forward is a separate, fixed cost
that a reference cache removes. Models are random-init (no downloads). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from spec_align.encoders import TINY_CLIP, ClipEncoder
from spec_align.losses import ContrastiveLoss, SpectralPenalty
from spec_align.modules import SpecAlignModule
from spec_align.utils.logging import quiet_third_party_messages

# name -> (open_clip model, embedding width, reference width, image side)
MODELS = {"tiny": (TINY_CLIP, 64, 1280, 32), "vit-b-32": ("ViT-B-32", 512, 768, 224)}

CONF = Path(__file__).resolve().parent.parent / "conf" / "loss"

# setting -> (loss config, overrides of its penalty options): the README's options.
SETTINGS = {
    "default": ("gaussian", {}),
    "fixed_frequencies": ("gaussian", {"frequencies": "fixed"}),
    "exact": ("gaussian", {"estimator": "exact"}),
    "batch_bandwidth": ("gaussian", {"bandwidth": "batch"}),
    "cosine": ("cosine", {}),
}


def make_penalty(setting: str, rff_dim: int) -> SpectralPenalty:
    """The penalty of conf/loss/<config>.yaml with the setting's overrides, lambda = 1."""
    config, overrides = SETTINGS[setting]
    options = OmegaConf.to_container(OmegaConf.load(CONF / f"{config}.yaml").spectral)
    for key in ("_target_", "weight", "seed"):
        options.pop(key)
    if options["kernel"] == "gaussian":
        options["rff_dim"] = rff_dim
    return SpectralPenalty(weight=1.0, **{**options, **overrides})


def build(model: str, setting: str, rff_dim: int, device: str) -> SpecAlignModule:
    """A SpecAlignModule with a random-init encoder and a precomputed-width reference."""
    name, _, ref_dim, _ = MODELS[model]
    module = SpecAlignModule(
        encoder=ClipEncoder(name, pretrained=None),
        task_loss=ContrastiveLoss(),
        penalty=make_penalty(setting, rff_dim),
        optimizer=partial(torch.optim.AdamW, lr=1e-5),
        ref_dim=ref_dim,
    )
    return module.to(device).train()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_step(
    model: str, setting: str, batch_size: int, steps: int, warmup: int, rff_dim: int, device: str
) -> dict:
    """Median step seconds with the penalty on and off, interleaved."""
    module = build(model, setting, rff_dim, device)
    image_size = MODELS[model][3]
    optimizer = module.configure_optimizers()
    generator = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(batch_size, 3, image_size, image_size, generator=generator).to(device),
        "text": [f"a photo of object {i % 97}" for i in range(batch_size)],
        "label": torch.zeros(batch_size, dtype=torch.long, device=device),
        "ref": torch.rand(batch_size, module.ref_dim, generator=generator).to(device),
    }
    times: dict[float, list[float]] = {1.0: [], 0.0: []}
    for step in range(warmup + steps):
        for weight in (1.0, 0.0):
            module.penalty.weight = weight
            _sync(device)
            start = time.perf_counter()
            out = module.compute_losses(batch, step)
            out["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            if step >= warmup:
                times[weight].append(time.perf_counter() - start)
    on, off = statistics.median(times[1.0]), statistics.median(times[0.0])
    return {"on": on, "off": off, "ratio": on / off, "steps": steps}


def bench_increment(
    model: str, setting: str, batch_size: int, steps: int, rff_dim: int, device: str
) -> float:
    """Median seconds of the penalty's forward and backward at a model's widths."""
    _, encoder_dim, ref_dim, _ = MODELS[model]
    penalty = make_penalty(setting, rff_dim)
    penalty.bind(encoder_dim, ref_dim)
    penalty.to(device)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(batch_size, encoder_dim, generator=generator).to(device).requires_grad_()
    ref = torch.randn(batch_size, ref_dim, generator=generator).to(device)
    penalty.fit(z.detach(), ref)
    times = []
    for step in range(steps + 2):
        _sync(device)
        start = time.perf_counter()
        penalty(z, ref, step=step).backward()
        _sync(device)
        z.grad = None
        if step >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


class _RandomSamples(torch.utils.data.Dataset):
    def __init__(self, size: int, image_size: int, ref_dim: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (size, 3, image_size, image_size), dtype=torch.uint8)
        self.refs = torch.randn(size, ref_dim, generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i],
            "text": f"a photo of object {i % 97}",
            "ref": self.refs[i],
        }


class StepTimer(L.Callback):
    """lambda on at even batches, off at odd ones; rank 0 writes the step times to `path`."""

    def __init__(self, path: str, warmup: int) -> None:
        self.path, self.warmup = path, warmup
        self.times: dict[str, list[float]] = {"on": [], "off": []}

    def setup(self, trainer, pl_module, stage) -> None:
        quiet_third_party_messages()  # in each spawned process, as the entry points do

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pl_module.penalty.weight = 1.0 if batch_idx % 2 == 0 else 0.0
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= 2 * self.warmup:
            key = "on" if batch_idx % 2 == 0 else "off"
            self.times[key].append(time.perf_counter() - self.start)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            with open(self.path, "w") as f:
                json.dump(self.times, f)


def _ddp_fit(setting: str, global_batch: int, steps: int, warmup: int, rff_dim: int, path: str):
    module = build("tiny", setting, rff_dim, "cpu")
    local_batch = global_batch // 2
    batches = 2 * (warmup + steps)
    data = _RandomSamples(global_batch * batches, MODELS["tiny"][3], module.ref_dim)
    trainer = L.Trainer(
        strategy="ddp_spawn",  # as trainer=ddp_sim, but forked from here, not re-run
        accelerator="cpu",
        devices=2,
        precision="32-true",
        max_steps=batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StepTimer(path, warmup)],
    )
    loader = torch.utils.data.DataLoader(data, batch_size=local_batch, drop_last=True)
    trainer.fit(module, loader)


def bench_ddp(setting: str, global_batch: int, steps: int, warmup: int, rff_dim: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "times.json")
        _ddp_fit(setting, global_batch, steps, warmup, rff_dim, path)
        with open(path) as f:
            times = json.load(f)
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    return {"on": on, "off": off, "ratio": on / off, "steps": len(times["on"])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="step,increment,ddp")
    parser.add_argument("--models", default="tiny,vit-b-32", help=f"comma list of {list(MODELS)}")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"of {list(SETTINGS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--global-batch", type=int, default=1024, help="increment and ddp")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per setting")
    parser.add_argument("--big-steps", type=int, default=2, help="steps for vit-b-32 on CPU")
    parser.add_argument(
        "--big-settings",
        default="default",
        help="settings timed as full vit-b-32 CPU steps ('': none, increment only)",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rff-dim", type=int, default=2048, help="as conf/loss/gaussian.yaml")
    args = parser.parse_args(argv)
    quiet_third_party_messages()
    parts, models = args.parts.split(","), args.models.split(",")
    settings = args.settings.split(",")
    results: dict = {"step": {}, "increment": {}, "ddp": {}}
    print(
        f"device={args.device} batch={args.batch_size} global batch={args.global_batch} "
        f"rff={args.rff_dim} torch={torch.__version__} threads={torch.get_num_threads()}"
    )

    if "step" in parts:
        print("\n| model | setting | steps | lambda > 0 s | lambda = 0 s | ratio |")
        print("|---|---|---|---|---|---|")
        for model in models:
            big_on_cpu = model != "tiny" and args.device == "cpu"
            steps = args.big_steps if big_on_cpu else args.steps
            warmup = 1 if big_on_cpu else args.warmup
            chosen = [s for s in args.big_settings.split(",") if s] if big_on_cpu else settings
            for setting in chosen:
                row = bench_step(
                    model, setting, args.batch_size, steps, warmup, args.rff_dim, args.device
                )
                results["step"][model, setting] = row
                print(
                    f"| {model} | {setting} | {steps} | {row['on']:.4f} | {row['off']:.4f} "
                    f"| {row['ratio']:.3f} |",
                    flush=True,
                )

    if "increment" in parts:
        batches = (args.batch_size, args.global_batch)
        print(
            "\n| model widths | setting | "
            + " | ".join(f"penalty fwd+bwd s, batch {b}" for b in batches)
            + " | ratio at batch 256 (step part; estimated = 1 + increment / lambda = 0 step) |"
        )
        print("|---|---|---|---|---|")
        for model in models:
            for setting in settings:
                seconds = [
                    bench_increment(model, setting, b, args.steps, args.rff_dim, args.device)
                    for b in batches
                ]
                results["increment"][model, setting] = seconds
                measured = results["step"].get((model, setting))
                base = next(
                    (r["off"] for (m, _), r in results["step"].items() if m == model), None
                )
                if measured is not None:
                    ratio = f"{measured['ratio']:.3f} (measured)"
                elif base is not None:
                    ratio = f"{1 + seconds[0] / base:.3f} (estimated)"
                else:
                    ratio = ""
                print(
                    f"| {model} | {setting} | "
                    + " | ".join(f"{s:.4f}" for s in seconds)
                    + f" | {ratio} |",
                    flush=True,
                )

    if "ddp" in parts:
        print(
            "\n| ddp, 2 CPU processes, tiny | setting | global batch | steps | lambda > 0 s "
            "| lambda = 0 s | ratio |"
        )
        print("|---|---|---|---|---|---|---|")
        for setting in settings:
            row = bench_ddp(setting, args.global_batch, args.steps, args.warmup, args.rff_dim)
            results["ddp"][setting] = row
            print(
                f"| tiny | {setting} | {args.global_batch} | {row['steps']} | {row['on']:.4f} "
                f"| {row['off']:.4f} | {row['ratio']:.3f} |",
                flush=True,
            )
    return results


if __name__ == "__main__":
    main()
