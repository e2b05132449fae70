"""Train a model: `python -m imagenot_jax.main --config configs/<name>.py[:arg] --workdir DIR`
(installed: `imagenot-train --config <name>[:arg] --workdir DIR`).

Override any config field from the command line: `--config.optim.lr=0.2`. An existing workdir
resumes from its latest checkpoint.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from imagenot_jax import config_files
from imagenot_jax.cli import (
    absolute_path,
    define_compilation_cache_flag,
    define_path_flag,
    run_command,
)
from imagenot_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file.", lock_config=True)
_WORKDIR = define_path_flag("workdir", None, "Checkpoints, logs and metrics (local or gs://).")
_COMPILATION_CACHE = define_compilation_cache_flag()


def main(argv: list[str]) -> None:
    config = _CONFIG.value
    # Paths given in the config or as overrides (--config.data.data_dir=.data/...) are as
    # relative as the flags: resolved against the directory the command runs in.
    config.data.data_dir = absolute_path(config.data.get("data_dir"))
    run_command(
        argv,
        trainer.train_and_evaluate,
        config,
        _WORKDIR.value,
        compilation_cache=_COMPILATION_CACHE.value,
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=config_files.flags_parser("config"))
