"""The `lutc` command line: compile (emit ir/llvm/asm/obj), targets, demo."""
from __future__ import annotations

import argparse
import os
import sys

from .errors import UsageError


def _parse_value(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(v.lower(), v)


def _knobs(pairs):
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise UsageError(f"--set expects knob=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def cmd_compile(args):
    from .backend.target import get_target
    from .kernels.compiled import CompiledKernel
    from .schedule import Schedule
    try:
        sched = Schedule.make(args.bits, args.group_size, **_knobs(args.set))
        target = get_target(args.target)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.emit == "obj" and args.output is None:
        raise UsageError("--emit obj needs -o FILE")
    if args.output is not None:
        _check_output(args.output)
    kernel = CompiledKernel(sched, target)
    parts = []
    for which in ("tables", "gemm"):
        text = kernel.emit(args.emit, which)
        if isinstance(text, bytes):
            parts.append(text)
        else:
            parts.append(f"; ---- {which} kernel, schedule {sched.to_json()}\n{text}")
    try:
        if args.emit == "obj":  # Mach-O for Darwin targets, ELF otherwise; checked before writing
            from .backend.aot import write_objects
            for path, info in write_objects(dict(zip(("tables", "gemm"), parts)), args.output, target):
                print(f"lutc: wrote {path} ({info.format} {info.arch})", file=sys.stderr)
            return 0
        out = "\n".join(parts)
        if args.output:
            with open(args.output, "w") as f:
                f.write(out)
        else:
            sys.stdout.write(out)
    except OSError as e:
        raise UsageError(f"cannot write {e.filename or args.output}: {e.strerror or e}") from None
    return 0


def _check_output(path: str):
    """-o FILE: its directory must exist (checked before compiling, so the error comes first)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write {path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"cannot write {path}: it is a directory")


def cmd_targets(args):
    from .backend.target import get_target, native_mismatch, target_names
    for name in target_names():
        t = get_target(name)
        d = t.describe()
        runs = "runs here" if native_mismatch(t) is None else "compile only"
        print(f"{name:14s} {d['triple']:28s} cpu={d['cpu']:16s} vector_bits={d['vector_bits']:<4d} "
              f"shuffle={str(d['byte_shuffle']):7s} {d['object_format']:6s} {runs}")
    return 0


def cmd_demo(args):
    from .demo import run_demo
    if not 1 <= args.bits <= 4:
        raise UsageError(f"--bits must be in 1..4, got {args.bits}")
    for name in ("n", "k"):
        v = getattr(args, name)
        if not 1 <= v <= 1 << 16:
            raise UsageError(f"--{name} must be in 1..65536, got {v}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    return run_demo(bits=args.bits, n=args.n, k=args.k, threads=args.threads)


def fail(command: str | None, message) -> int:
    """The one error reporter of every `lutc` subcommand: `lutc <command>: error: <message>` on one
    line of stderr; returns the exit code 2."""
    text = " ".join(str(message).split()) or type(message).__name__
    print(f"lutc{' ' + command if command else ''}: error: {text}", file=sys.stderr)
    return 2


def _command(args) -> str:
    """'tune', 'db merge', ...: the subcommand as typed."""
    sub = getattr(args, "db_cmd", None)
    return f"{args.cmd} {sub}" if sub else args.cmd


def main(argv=None):
    p = argparse.ArgumentParser(prog="lutc", description="lutc: LUT-GEMM compiler for low-bit LLMs on CPUs")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile", help="emit a schedule's lutc IR, LLVM IR, assembly or object")
    c.add_argument("--target", default="host")
    c.add_argument("--emit", choices=("ir", "llvm", "asm", "obj"), default="asm")
    c.add_argument("--bits", type=int, required=True)
    c.add_argument("--group-size", type=int, default=128)
    c.add_argument("--set", action="append", metavar="KNOB=VALUE", help="schedule knob (repeatable)")
    c.add_argument("-o", "--output")
    c.set_defaults(fn=cmd_compile)
    t = sub.add_parser("targets", help="list known targets")
    t.set_defaults(fn=cmd_targets)
    d = sub.add_parser("demo", help="quantize a random matrix, run the LUT kernel, compare with numpy/torch")
    d.add_argument("--bits", type=int, default=2)
    d.add_argument("--n", type=int, default=4096)
    d.add_argument("--k", type=int, default=4096)
    d.add_argument("--threads", type=int, default=None)
    d.set_defaults(fn=cmd_demo)
    _register_plugins(sub)
    args = p.parse_args(argv)
    # A subcommand reports a problem the user can fix by raising UsageError; a plugin that cannot
    # import lutc (quant) lists the exception types that mean that in its module's USER_ERRORS.
    plugin_errors = getattr(sys.modules.get(getattr(args.fn, "__module__", "")), "USER_ERRORS", ())
    try:
        return args.fn(args)
    except (UsageError, *plugin_errors) as e:
        return fail(_command(args), e)


def _register_plugins(sub):
    """Subcommands of other packages (entry points "lutc.commands": `register(subparsers)`; each
    subparser sets `fn`, a callable taking the parsed args and returning an exit code)."""
    from .plugins import COMMANDS, load
    for register in load(COMMANDS):
        register(sub)


if __name__ == "__main__":
    sys.exit(main())
