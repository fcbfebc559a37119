"""lutc IR core: SSA values, operations with nested regions, functions, and the printer."""
from __future__ import annotations

from dataclasses import dataclass

from .types import BlockType


@dataclass(frozen=True)
class Loc:
    """A source location in user kernel code (1-based line, 0-based column)."""

    filename: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}:{self.col + 1}"


class Value:
    """An SSA value: the result of an Op or an argument of a Region."""

    __slots__ = ("type", "owner", "index", "name")

    def __init__(self, type_, owner=None, index=0, name=None):
        self.type = type_
        self.owner = owner      # the defining Op, or the Region for block arguments
        self.index = index
        self.name = name        # an optional hint for printing

    def __repr__(self) -> str:
        return f"Value({self.type}, {self.name or id(self)})"


class Region:
    """An ordered list of ops with block arguments (loop induction vars, params)."""

    __slots__ = ("args", "ops", "parent")

    def __init__(self, arg_types=(), arg_names=()):
        names = list(arg_names) + [None] * (len(arg_types) - len(arg_names))
        self.args = [Value(t, self, i, n) for i, (t, n) in enumerate(zip(arg_types, names))]
        self.ops: list[Op] = []
        self.parent = None

    def add_arg(self, type_, name=None) -> Value:
        v = Value(type_, self, len(self.args), name)
        self.args.append(v)
        return v


class Op:
    """One operation: opname, operands, results, attributes and nested regions."""

    __slots__ = ("opname", "operands", "results", "attrs", "regions", "loc", "parent")

    def __init__(self, opname, operands, result_types, attrs=None, regions=(), loc=None):
        self.opname = opname
        self.operands = list(operands)
        self.results = [Value(t, self, i) for i, t in enumerate(result_types)]
        self.attrs = dict(attrs or {})
        self.regions = list(regions)
        for r in self.regions:
            r.parent = self
        self.loc = loc
        self.parent = None

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise ValueError(f"{self.opname} has {len(self.results)} results, not 1")
        return self.results[0]

    def __repr__(self) -> str:
        return f"Op({self.opname})"


class Param:
    """A kernel parameter: its name and IR type."""

    __slots__ = ("name", "type")

    def __init__(self, name, type_):
        self.name = name
        self.type = type_


class Function:
    """A kernel: named parameters and a body region whose args are the parameters."""

    def __init__(self, name, params, grid_rank=1):
        self.name = name
        self.params = list(params)
        self.body = Region([p.type for p in self.params], [p.name for p in self.params])
        self.grid_rank = grid_rank

    def walk(self):
        """Yield every op, depth first, in program order."""
        yield from walk_region(self.body)

    def __str__(self) -> str:
        return print_function(self)


def walk_region(region):
    for op in region.ops:
        yield op
        for r in op.regions:
            yield from walk_region(r)


# ----------------------------------------------------------------------------- printer

_ATTR_ORDER = ("kind", "pred", "axis", "start", "end", "to", "value", "access", "size")


class _Namer:
    def __init__(self):
        self.names = {}
        self.used = set()

    def __call__(self, v: Value) -> str:
        if v not in self.names:
            base = v.name or str(len(self.names))
            name, i = base, 1
            while name in self.used:
                name, i = f"{base}.{i}", i + 1
            self.used.add(name)
            self.names[v] = name
        return "%" + self.names[v]


def _fmt_attrs(op) -> str:
    keys = sorted(op.attrs, key=lambda k: (_ATTR_ORDER.index(k) if k in _ATTR_ORDER else 99, k))
    parts = []
    for k in keys:
        if k.startswith("_"):
            continue
        v = op.attrs[k]
        parts.append(f"{k}={v}")
    return " {" + ", ".join(parts) + "}" if parts else ""


def _print_region(region, namer, indent, out):
    pad = "  " * indent
    for op in region.ops:
        res = ", ".join(namer(r) for r in op.results)
        lhs = f"{res} = " if res else ""
        args = ", ".join(namer(a) for a in op.operands)
        types = ", ".join(str(r.type) for r in op.results)
        line = f"{pad}{lhs}{op.opname} {args}{_fmt_attrs(op)}"
        if types:
            line += f" : {types}"
        if op.regions:
            heads = []
            for r in op.regions:
                heads.append("(" + ", ".join(f"{namer(a)}: {a.type}" for a in r.args) + ")")
            out.append(line + " {")
            for i, r in enumerate(op.regions):
                if i:
                    out.append(f"{pad}}} else {{")
                if r.args:
                    out.append(f"{pad}  ^args{heads[i]}")
                _print_region(r, namer, indent + 1, out)
            out.append(pad + "}")
        else:
            out.append(line)


def print_function(fn: Function) -> str:
    """A readable text form of a Function (for --emit ir and debugging)."""
    namer = _Namer()
    params = ", ".join(f"{namer(a)}: {a.type}" for a in fn.body.args)
    out = [f"func @{fn.name}({params}) grid_rank={fn.grid_rank} {{"]
    _print_region(fn.body, namer, 1, out)
    out.append("}")
    return "\n".join(out)


def is_block(v: Value) -> bool:
    return isinstance(v.type, BlockType)
