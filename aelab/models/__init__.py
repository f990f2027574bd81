"""Models, one small file each; importing this package registers them all."""

from aelab.models import ae, cae, dae, decomposition, iaf_vae, ksparse, sparse, vae  # noqa: F401  (registration)
from aelab.models.base import AEConfig, Autoencoder, build_model, model_config, register_model

__all__ = ["AEConfig", "Autoencoder", "build_model", "model_config", "register_model"]
