"""imagenot_jax: train and evaluate ImageNet-era architectures on ImageNot with JAX/Flax."""

__version__ = "0.1.0"
