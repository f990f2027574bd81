"""Models, one small file each; importing this package registers them all."""

from aelab.models import (  # noqa: F401  (registration)
    ae,
    cae,
    classifier,
    dae,
    decomposition,
    disentangle,
    iaf_vae,
    ksparse,
    sparse,
    tdvae,
    text_vae,
    vae,
    vqvae,
)
from aelab.models.base import AEConfig, Autoencoder
from aelab.models.vqvae import VQVAE, VQVAE2, VQAutoencoder, VQVAE2Config, VQVAEConfig
from aelab.protocol import Capabilities, Model, build_model, from_pretrained, model_config, register_model

__all__ = ["VQVAE", "VQVAE2", "AEConfig", "Autoencoder", "Capabilities", "Model", "VQAutoencoder", "VQVAE2Config",
           "VQVAEConfig", "build_model", "from_pretrained", "model_config", "register_model"]
