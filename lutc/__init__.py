"""lutc: a Triton-style DSL and autotuning compiler for bit-serial LUT GEMM on CPUs."""
__version__ = "0.1.0"

from . import language  # noqa: E402
from .errors import CompilationError, LaunchError  # noqa: E402
from .backend.target import Target, get_target, target_names  # noqa: E402
from .jit import JITFunction, jit  # noqa: E402


def compile(schedule, target="host"):
    """Compile a kernel Schedule for `target`; returns a CompiledKernel (see lutc.kernels)."""
    from .kernels.compiled import compile_schedule
    return compile_schedule(schedule, target)


def __getattr__(name):
    # lazily imported submodules keep `import lutc` light
    if name in ("kernels", "ops", "schedule"):
        import importlib
        return importlib.import_module(f"lutc.{name}")
    if name == "Schedule":
        from .schedule import Schedule
        return Schedule
    raise AttributeError(f"module 'lutc' has no attribute {name!r}")


__all__ = ["__version__", "language", "jit", "JITFunction", "compile", "CompilationError",
           "LaunchError", "Target", "get_target", "target_names", "kernels", "ops", "Schedule"]
