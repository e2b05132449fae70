"""Ranking: do model rankings carry over between result sets (`python -m imagenot_jax.rank`)."""
