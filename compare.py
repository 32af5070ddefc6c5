"""Compare two encoders on a data set with SPEC: `python compare.py encoder=clip ref=dinov2`."""

import hydra
from omegaconf import DictConfig

from spec_align.explain.run import run_compare
from spec_align.utils import register_resolvers
from spec_align.utils.logging import quiet_third_party_messages

register_resolvers()
quiet_third_party_messages()


@hydra.main(version_base="1.3", config_path="conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    run_compare(cfg)


if __name__ == "__main__":
    main()
