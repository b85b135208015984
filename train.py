"""Train: `python train.py [task=readout|classifier|decoder|...] [model=...] [data=...] [beta=...]`."""

import hydra
from omegaconf import DictConfig

from infoflow.tasks import run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_task(cfg)
    print(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    objective = cfg.get("optimized_metric")
    return float(metrics[objective]) if objective and objective in metrics else None


if __name__ == "__main__":
    main()
