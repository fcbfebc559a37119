"""The lutc frontend: Python AST of @lutc.jit kernels -> lutc IR."""
