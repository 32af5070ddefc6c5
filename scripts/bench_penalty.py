"""Overhead of the SPEC-align penalty: median training-step time with lambda > 0 over lambda = 0.

    python scripts/bench_penalty.py                       # tiny CLIP and ViT-B-32 on the CPU
    python scripts/bench_penalty.py --device cuda --models vit-b-32 --steps 20

Both settings run in the same process on the same module, interleaved step by step (lambda > 0,
then lambda = 0, ...), so machine load affects both alike. A step is the module's full training
step outside Lightning: embeddings, contrastive loss, penalty (when on), backward, AdamW. The
reference embeddings are precomputed random vectors of the reference's width (1280 for
EfficientNet-Lite0 next to the tiny model, 768 for DINOv2 ViT-B/14 next to ViT-B-32), so the
ratio measures the penalty itself; a reference network's forward is a separate, fixed cost that
a reference cache removes. Models are random-init (no downloads).
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from spec_align.encoders import TINY_CLIP, ClipEncoder
from spec_align.losses import ContrastiveLoss, SpectralPenalty
from spec_align.modules import SpecAlignModule

# name -> (open_clip model, reference width, image side)
MODELS = {"tiny": (TINY_CLIP, 1280, 32), "vit-b-32": ("ViT-B-32", 768, 224)}


def build(model: str, rff_dim: int, kernel: str, device: str) -> tuple[SpecAlignModule, int]:
    """A SpecAlignModule with a random-init encoder and a precomputed-width reference."""
    name, ref_dim, image_size = MODELS[model]
    module = SpecAlignModule(
        encoder=ClipEncoder(name, pretrained=None),
        task_loss=ContrastiveLoss(),
        penalty=SpectralPenalty(weight=1.0, kernel=kernel, rff_dim=rff_dim),
        optimizer=partial(torch.optim.AdamW, lr=1e-5),
        ref_dim=ref_dim,
    )
    return module.to(device).train(), image_size


def bench(
    model: str, batch_size: int, steps: int, warmup: int, rff_dim: int, kernel: str, device: str
) -> dict:
    """Median step seconds with the penalty on and off, interleaved."""
    module, image_size = build(model, rff_dim, kernel, device)
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
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = module.compute_losses(batch, step)
            out["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if step >= warmup:
                times[weight].append(time.perf_counter() - start)
    on, off = statistics.median(times[1.0]), statistics.median(times[0.0])
    return {"model": model, "on": on, "off": off, "ratio": on / off, "steps": steps}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,vit-b-32", help=f"comma list of {list(MODELS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="measured steps per setting")
    parser.add_argument("--big-steps", type=int, default=3, help="steps for vit-b-32 on CPU")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rff-dim", type=int, default=2048, help="as conf/loss/gaussian.yaml")
    parser.add_argument("--kernel", default="gaussian", choices=["gaussian", "cosine"])
    args = parser.parse_args(argv)

    rows = []
    print(f"device={args.device} batch={args.batch_size} kernel={args.kernel} rff={args.rff_dim}")
    print(f"{'model':10s} {'steps':>5s} {'lambda>0 s':>11s} {'lambda=0 s':>11s} {'ratio':>6s}")
    for model in args.models.split(","):
        big_on_cpu = model != "tiny" and args.device == "cpu"
        steps = args.big_steps if big_on_cpu else args.steps
        warmup = 1 if big_on_cpu else args.warmup
        row = bench(model, args.batch_size, steps, warmup, args.rff_dim, args.kernel, args.device)
        rows.append(row)
        print(
            f"{model:10s} {steps:5d} {row['on']:11.4f} {row['off']:11.4f} {row['ratio']:6.3f}",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
