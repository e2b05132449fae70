"""Curation configs: `python -m curation.run --config curation/configs/<name>.py[:arg]`."""
