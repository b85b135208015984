"""Train: `python train.py [task=readout|classifier|decoder|...] [model=...] [data=...] [beta=...]`.

A user error prints one line (``error: ...``) and exits with code 2; SIGTERM/SIGINT exit with 143/130 and
print the command that resumes the run (see `infoflow.cli.entry`).
"""

import hydra
from omegaconf import DictConfig

import infoflow.studies  # noqa: F401  (registers task=study)
from infoflow.cli.entry import reports_user_errors, run_entry
from infoflow.cli.plugins import name_plugins_from_hydra
from infoflow.cli.settings import check_config
from infoflow.tasks import run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@reports_user_errors
def main(cfg: DictConfig) -> float | None:
    metrics = run_task(check_config(name_plugins_from_hydra(cfg)))
    print(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    objective = cfg.get("optimized_metric")
    return float(metrics[objective]) if objective and objective in metrics else None


if __name__ == "__main__":
    run_entry(main)
