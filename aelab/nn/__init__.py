"""Neural-network building blocks shared by every model."""

from aelab.nn.backbones import BackboneConfig, build_decoder, build_encoder
from aelab.nn.linear import Linear, cpu_gemm, set_cpu_gemm

__all__ = ["BackboneConfig", "Linear", "build_decoder", "build_encoder", "cpu_gemm", "set_cpu_gemm"]
