"""lutc's own kernels, written in the lutc DSL (`build_tables`, `lut_gemm`), their ABI (`spec`),
weight packing, and CompiledKernel (a compiled Schedule)."""
from .compiled import CompiledKernel, Prepared
from .gemm import build_tables, lut_gemm
from .packing import PackedWeights, pack_weights

__all__ = ["lut_gemm", "build_tables", "CompiledKernel", "Prepared", "PackedWeights", "pack_weights"]
