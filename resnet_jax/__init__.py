"""resnet-jax: Deep Residual Learning (He et al., 2015) in JAX/Flax."""
__version__ = "0.1.0"
