"""Models, one small file each; importing this package registers them all."""

from aelab.models import ae, cae, dae, decomposition, iaf_vae, ksparse, sparse, vae, vqvae  # noqa: F401  (registration)
from aelab.models.base import AEConfig, Autoencoder, PretrainedModel, build_model, model_config, register_model
from aelab.models.vqvae import VQVAE, VQVAE2, VQAutoencoder, VQVAE2Config, VQVAEConfig

__all__ = ["VQVAE", "VQVAE2", "AEConfig", "Autoencoder", "PretrainedModel", "VQAutoencoder", "VQVAE2Config",
           "VQVAEConfig", "build_model", "model_config", "register_model"]
