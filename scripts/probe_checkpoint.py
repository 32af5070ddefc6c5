"""Probe a trained checkpoint with scikit-learn, independently of the module's logged probes.

    python scripts/probe_checkpoint.py logs/train/runs/<run>     # its last.ckpt
    python scripts/probe_checkpoint.py <run> --weights data/starts/<start>/encoder.pt

The run's config is composed again from its recorded overrides (as `eval.py` does), the
encoder is built and given the checkpoint's (or the file's) weights, and the first
`model.probe_size` validation samples (the module's probe set) are embedded. Per labelled
attribute it prints scikit-learn's leave-one-out 10-NN accuracy (cosine) and a logistic
regression's accuracy (trained on the even rows, tested on the odd ones, standardised
features): the definitions of `spec_align.modules.probes`, computed by other code. Next to
them: the values the run logged last (`val/probe/<attribute>_knn`, `_linear`), when the probe
was of the same weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import LeaveOneOut, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from spec_align.data.transforms import ViewAdapter
from spec_align.modules.init_weights import load_encoder_weights
from spec_align.train import recompose_run_config
from spec_align.utils import register_resolvers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_table import final_metrics  # noqa: E402


def probe_embeddings(run_dir: Path, weights: Path) -> tuple[np.ndarray, list[dict], list[int]]:
    """Embeddings of the run's probe set by the encoder with `weights`, its metadata, labels."""
    cfg = recompose_run_config(run_dir, "start=none")
    cfg.paths.output_dir = str(run_dir)
    encoder = instantiate(cfg.encoder)
    load_encoder_weights(encoder, str(weights))
    encoder.eval()
    view = ViewAdapter.for_encoder(encoder)
    datamodule = instantiate(cfg.data, ref_cache=None)
    datamodule.prepare_data()
    datamodule.setup("validate")
    embeddings, meta, labels = [], [], []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            embeddings.append(encoder(view(batch["image"])).double())
            meta += batch["meta"]
            labels += batch["label"].tolist()
            if len(meta) >= probe_rows(cfg):
                break
    n = probe_rows(cfg)
    return torch.cat(embeddings)[:n].numpy(), meta[:n], labels[:n]


def probe_rows(cfg) -> int:
    """How many validation samples the module probed: `model.probe_size`, or fewer when the
    run validated only `trainer.limit_val_batches` batches."""
    limit = cfg.trainer.get("limit_val_batches")
    if limit is None:
        return cfg.model.probe_size
    if isinstance(limit, float):
        raise SystemExit("runs with a fractional trainer.limit_val_batches are not supported")
    batch = cfg.data.get("val_batch_size") or cfg.data.batch_size
    return min(cfg.model.probe_size, limit * batch)


def sklearn_probes(z: np.ndarray, values: list) -> tuple[float, float]:
    """(leave-one-out 10-NN accuracy, even/odd logistic regression accuracy)."""
    keep = [i for i, v in enumerate(values) if v is not None]
    z, y = z[keep], np.array([str(values[i]) for i in keep])
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    knn = KNeighborsClassifier(n_neighbors=10, metric="cosine")
    knn_acc = float((cross_val_predict(knn, unit, y, cv=LeaveOneOut()) == y).mean())
    scaler = StandardScaler().fit(z[0::2])
    model = LogisticRegression(C=1.0, max_iter=500).fit(scaler.transform(z[0::2]), y[0::2])
    linear_acc = float(model.score(scaler.transform(z[1::2]), y[1::2]))
    return knn_acc, linear_acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a training run's directory")
    parser.add_argument("--weights", type=Path, help="encoder weights (default: its last.ckpt)")
    args = parser.parse_args(argv)
    register_resolvers()
    weights = args.weights or args.run_dir / "checkpoints" / "last.ckpt"
    z, meta, labels = probe_embeddings(args.run_dir, weights)
    logged = {}
    if args.weights is None and (args.run_dir / "csv" / "metrics.csv").is_file():
        logged = final_metrics(args.run_dir / "csv" / "metrics.csv")
    attributes = {"label": labels}
    for name in sorted({k for m in meta if m for k in m}):
        values = [m.get(name) if m else None for m in meta]
        if all(isinstance(v, str) or v is None for v in values):  # categorical metadata only
            attributes[name] = values
    print(f"{weights}: {len(z)} probe samples")
    print(f"{'attribute':>10}  {'knn':>6} {'logged':>6}  {'linear':>6} {'logged':>6}")
    for name, values in attributes.items():
        knn, linear = sklearn_probes(z, values)
        logged_knn = logged.get(f"val/probe/{name}_knn", float("nan"))
        logged_linear = logged.get(f"val/probe/{name}_linear", float("nan"))
        print(f"{name:>10}  {knn:6.3f} {logged_knn:6.3f}  {linear:6.3f} {logged_linear:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
