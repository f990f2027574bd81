"""Neural-network building blocks shared by every model."""

from aelab.nn.backbones import BackboneConfig, build_decoder, build_encoder

__all__ = ["BackboneConfig", "build_decoder", "build_encoder"]
