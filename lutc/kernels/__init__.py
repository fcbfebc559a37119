"""lutc's own kernels, written in the lutc DSL (`lut_gemm`, `build_tables`)."""
from ..schedule import Schedule, make_schedule
from .compiled import CompiledKernel
from .gemm import build_tables, lut_gemm
from .packing import PackedWeights, pack_weights

lut_gemm.schedule = make_schedule

__all__ = ["lut_gemm", "build_tables", "Schedule", "CompiledKernel", "PackedWeights", "pack_weights"]
