"""Evaluate a checkpoint: `python eval.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt`"""

import hydra
from omegaconf import DictConfig

from spec_align.losses import DivergenceError
from spec_align.train import ConfigError, evaluate
from spec_align.utils import register_resolvers
from spec_align.utils.logging import quiet_third_party_messages

register_resolvers()
quiet_third_party_messages()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        metrics = evaluate(cfg)
    except (ConfigError, DivergenceError) as err:  # the message is the fix: no traceback
        raise SystemExit(f"error: {err}") from None
    for name, value in sorted(metrics.items()):
        print(f"{name}: {value:.6f}")


if __name__ == "__main__":
    main()
