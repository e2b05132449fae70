"""`python -m imagenot_jax.evaluate`: evaluate a checkpoint (usage in evaluation.py)."""

from absl import app

from imagenot_jax import config_files
from imagenot_jax.evaluate import evaluation

__doc__ = evaluation.__doc__  # what --help prints
evaluation.define_flags()
app.run(evaluation.main, flags_parser=config_files.flags_parser())  # bad flags: one line
