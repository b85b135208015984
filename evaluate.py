"""Evaluate: `python evaluate.py [analysis=heatmaps|...] [method=...] [model=...] [data=...]`.

Writes into Hydra's run directory and prints that directory as its last line. A user error prints one line
(``error: ...``) and exits with code 2; SIGTERM/SIGINT stop it at once (exit code 143/130).
"""

import hydra
from omegaconf import DictConfig

import infoflow.tasks  # noqa: F401  (registers the trainers of the models' default weights)
from infoflow.analyses import run_analysis
from infoflow.cli.entry import reports_user_errors, run_entry
from infoflow.cli.plugins import name_plugins_from_hydra
from infoflow.cli.settings import check_config


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    run_analysis(check_config(name_plugins_from_hydra(cfg)))
    print(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    run_entry(main)
