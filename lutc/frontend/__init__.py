"""The lutc frontend: Python AST of @lutc.jit kernels -> lutc IR.

ast_to_ir.CodeGenerator is the entry point (names, calls, inlining); statements, expressions
and values are its parts; registry declares what each builtin means, language_builtins and
python_builtins fill it.
"""
