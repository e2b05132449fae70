"""Suite configs: the runs of a study on two datasets and how to rank them (imagenot_jax.suite)."""
