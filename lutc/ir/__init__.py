"""lutc IR: typed SSA with structured control flow (types, ops, builder, verifier, printer)."""
from . import types
from .builder import IRBuilder, IRTypeError
from .pairs import pair_order
from .core import Function, Loc, Op, Param, Region, Value, print_function, walk_region
from .verifier import VerificationError, verify

__all__ = ["types", "IRBuilder", "IRTypeError", "Function", "Loc", "Op", "Param", "Region",
           "Value", "pair_order", "print_function", "walk_region", "VerificationError", "verify"]
