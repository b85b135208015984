"""Evaluate: `python evaluate.py [analysis=heatmaps|...] [method=...] [model=...] [data=...]`.

Writes into Hydra's run directory and prints that directory as its last line.
"""

import hydra
from omegaconf import DictConfig

from infoflow.analyses import run_analysis


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_analysis(cfg)
    print(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
