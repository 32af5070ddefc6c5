"""Train SPEC-align: `python train.py [group=option ...] [key=value ...]` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from spec_align.losses import DivergenceError
from spec_align.train import ConfigError, run
from spec_align.utils import register_resolvers
from spec_align.utils.logging import quiet_third_party_messages

register_resolvers()
quiet_third_party_messages()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = run(cfg)
    except (ConfigError, DivergenceError) as err:  # the message is the fix: no traceback
        raise SystemExit(f"error: {err}") from None
    # The value a sweeper (e.g. Optuna) optimises.
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
