"""robustgan: GAN-based adversarial robustness in JAX/Flax."""

__version__ = "0.1.0"
