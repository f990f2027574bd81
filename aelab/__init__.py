"""aelab: the autoencoder family in PyTorch, from the plain AE to the VAE and its variants."""

from aelab import data, metrics, models, priors  # noqa: F401  (registration)
from aelab.api import fit
from aelab.data.base import DataConfig, load_data
from aelab.models.base import Autoencoder, build_model
from aelab.registry import DATASETS, LIKELIHOODS, METRICS, MODELS
from aelab.training.trainer import Trainer, TrainerConfig

__version__ = "0.1.0"

__all__ = ["DATASETS", "LIKELIHOODS", "METRICS", "MODELS", "Autoencoder", "DataConfig", "Trainer", "TrainerConfig",
           "__version__", "build_model", "fit", "load_data"]
