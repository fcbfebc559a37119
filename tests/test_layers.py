"""The import rules of docs/architecture.md: quant at the bottom, lutc above it, runtime on top;
the compiler core knows nothing of lutc's kernels, tuner or runner; and no import cycle, even
counting imports inside functions (so no function-level import exists only to dodge a cycle)."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("quant", "lutc", "runtime")
CORE = ("lutc.jitfunction", "lutc.compiler", "lutc.launcher", "lutc.frontend", "lutc.ir", "lutc.passes",
        "lutc.backend", "lutc.errors", "lutc.cache", "lutc.language")
NOT_IN_CORE = ("lutc.kernels", "lutc.ops", "lutc.tuning", "lutc.remote", "lutc.demo", "lutc.cli")


def _modules():
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = f
    return mods


def _imports(mods):
    """{module: {imported project module: 'top' or 'function'}}."""
    out = {}
    for name, f in mods.items():
        tree = ast.parse(f.read_text())
        is_pkg = f.name == "__init__.py"
        top_nodes = {id(n) for n in ast.walk(ast.Module(body=[n for n in tree.body
                                                              if not isinstance(n, (ast.FunctionDef, ast.ClassDef,
                                                                                    ast.AsyncFunctionDef))],
                                                        type_ignores=[]))}
        deps = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[:len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module
                targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in mods]
            else:
                continue
            for t in targets:
                while t and t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name:
                    deps[t] = "top" if id(node) in top_nodes or deps.get(t) == "top" else "function"
        out[name] = deps
    return out


GRAPH = _imports(_modules())


def test_quant_imports_neither_lutc_nor_runtime():
    bad = [(m, t) for m, ds in GRAPH.items() if m.split(".")[0] == "quant" for t in ds
           if t.split(".")[0] != "quant"]
    assert bad == []


def test_lutc_never_imports_runtime():
    bad = [(m, t) for m, ds in GRAPH.items() if m.split(".")[0] == "lutc" for t in ds
           if t.split(".")[0] == "runtime"]
    assert bad == []


def test_compiler_core_knows_nothing_of_kernels_tuner_or_runner():
    bad = [(m, t) for m, ds in GRAPH.items() if m.startswith(CORE) for t in ds if t.startswith(NOT_IN_CORE)]
    assert bad == []


def test_no_import_cycles_even_through_function_level_imports():
    # a package's own __init__ is imported first when any of its submodules is: not an edge
    def edges(m):
        return [t for t in GRAPH[m] if not m.startswith(t + ".")]
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for t in edges(m):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2
    for m in GRAPH:
        if m not in state:
            visit(m, [])
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)
