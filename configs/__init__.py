"""Run configs, one file per recipe (`get_config(arg)` returns an ml_collections.ConfigDict).

In a checkout: `--config configs/resnet50.py[:arg]`. Installed, this folder is the package
`imagenot_jax.configs` (imagenot_jax/configs links here), and commands also take the name:
`--config resnet50[:arg]` (imagenot_jax/config_files.py).
"""
