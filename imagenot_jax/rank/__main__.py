"""`python -m imagenot_jax.rank`: compare model rankings (usage in ranking.py)."""

from absl import app

from imagenot_jax import config_files
from imagenot_jax.rank import ranking

__doc__ = ranking.__doc__  # what --help prints
ranking.define_flags()
app.run(ranking.main, flags_parser=config_files.flags_parser())  # bad flags: one line
