"""Evaluate a checkpoint: `python eval.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt`"""

import hydra
from omegaconf import DictConfig

from spec_align.train import evaluate
from spec_align.utils import register_resolvers
from spec_align.utils.logging import quiet_third_party_messages

register_resolvers()
quiet_third_party_messages()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    for name, value in sorted(evaluate(cfg).items()):
        print(f"{name}: {value:.6f}")


if __name__ == "__main__":
    main()
