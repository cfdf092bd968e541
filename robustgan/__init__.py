"""robustgan: GAN-based adversarial robustness in JAX/Flax."""

from robustgan.parallel import use_cpu_cores

__version__ = "0.1.0"

use_cpu_cores()
