"""aelab: the autoencoder family in PyTorch, from the plain AE to the VAE and its variants."""

from aelab import data, metrics, models, priors, report  # noqa: F401  (registration)
from aelab.api import fit
from aelab.batch import Batch
from aelab.data.base import DataConfig, load_data
from aelab.models.base import Autoencoder
from aelab.protocol import Capabilities, Model, build_model, from_pretrained, register_model
from aelab.registry import DATASETS, LIKELIHOODS, METRICS, MODELS
from aelab.training.trainer import Trainer, TrainerConfig

__version__ = "0.1.0"

__all__ = ["DATASETS", "LIKELIHOODS", "METRICS", "MODELS", "Autoencoder", "Batch", "Capabilities", "DataConfig",
           "Model", "Trainer", "TrainerConfig", "__version__", "build_model", "fit", "from_pretrained", "load_data",
           "register_model"]
