"""Evaluation of checkpoints: predictions, metrics and label views.

Command line: `python -m imagenot_jax.evaluate` (see evaluation.py).
"""
