"""lutc: a Triton-style DSL and autotuning compiler for bit-serial LUT GEMM on CPUs."""
__version__ = "0.1.0"

from . import language  # noqa: E402
from .backend.target import Target, get_target, target_names  # noqa: E402
from .errors import CompilationError, LaunchError  # noqa: E402
from .jitfunction import JITFunction, jit  # noqa: E402
from .schedule import Schedule  # noqa: E402


def compile(schedule, target="host"):
    """Compile a kernel Schedule for `target`; returns a lutc.kernels.CompiledKernel."""
    from .kernels.compiled import CompiledKernel
    return CompiledKernel(schedule, target)


def __getattr__(name):
    # lazily imported submodules keep `import lutc` light
    if name in ("kernels", "ops"):
        import importlib
        return importlib.import_module(f"lutc.{name}")
    raise AttributeError(f"module 'lutc' has no attribute {name!r}")


__all__ = ["__version__", "language", "jit", "JITFunction", "compile", "CompilationError",
           "LaunchError", "Target", "get_target", "target_names", "kernels", "ops", "Schedule"]
