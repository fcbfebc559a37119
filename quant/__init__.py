"""quant: float weights -> QuantizedTensor (b-bit codes, per-bit-plane fp16 scales, fp16 zeros)."""

from .api import quantize
from .model import QuantizedModel
from .tensor import QuantizedTensor, bitplanes

__all__ = ["QuantizedTensor", "QuantizedModel", "quantize", "bitplanes"]
