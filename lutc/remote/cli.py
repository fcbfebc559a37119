"""`lutc runner` (serve, or measure one schedule on a runner) and `lutc estimate`: the remote plugin of lutc.cli."""
from __future__ import annotations

import json
import os
import sys

from ..errors import UsageError

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def register(sub):
    r = sub.add_parser("runner", help="time lutc kernels on this device for a remote tuner (or query a runner)",
                       description="Serve: lutc runner --listen [HOST:]PORT --token-file FILE. Query: lutc runner "
                       "--connect HOST:PORT --token-file FILE --bits B --shape MxNxK. See docs/targets.md.")
    mode = r.add_mutually_exclusive_group(required=True)
    mode.add_argument("--listen", metavar="[HOST:]PORT", help="serve on HOST:PORT (HOST defaults to 127.0.0.1)")
    mode.add_argument("--connect", metavar="HOST:PORT", help="measure one schedule on that runner, print JSON")
    mode.add_argument("--new-token", metavar="FILE", help="write a fresh random token to FILE (mode 0600)")
    r.add_argument("--token-file", help="file holding the shared token (both ends)")
    r.add_argument("--max-message-mb", type=float, default=256, help="largest message accepted (default 256 MiB)")
    r.add_argument("--idle-timeout", type=float, default=600, help="close a silent session after S seconds")
    r.add_argument("--handshake-timeout", type=float, default=10, help="seconds a new connection has to authenticate "
                   "(default 10)")
    r.add_argument("--request-timeout", type=float, default=300, help="seconds one request may take; the session "
                   "is then ended (default 300)")
    r.add_argument("--max-sessions", type=int, default=4, help="authenticated sessions at once; measurements still "
                   "run one at a time (default 4)")
    r.add_argument("--max-problem-mb", type=float, default=2048, help="memory one problem may need on the runner "
                   "(default 2048 MiB)")
    r.add_argument("--once", action="store_true", help="serve one session, then exit")
    r.add_argument("--target", default=None, help="with --connect: compile for this target (default: the runner's CPU)")
    r.add_argument("--bits", type=int, default=2)
    r.add_argument("--group-size", type=int, default=128)
    r.add_argument("--shape", default="1x4096x4096", help="with --connect: MxNxK (default 1x4096x4096)")
    r.add_argument("--set", action="append", metavar="KNOB=VALUE", help="schedule knob (repeatable)")
    r.add_argument("--repeats", type=int, default=7)
    r.set_defaults(fn=cmd_runner)

    e = sub.add_parser("estimate", help="rank schedules for a target with the static cost model (no measurement)")
    e.add_argument("--target", default="host")
    e.add_argument("--bits", type=int, default=2)
    e.add_argument("--group-size", type=int, default=128)
    e.add_argument("--shape", default="1x4096x4096", help="MxNxK (default 1x4096x4096)")
    e.add_argument("--top", type=int, default=5)
    e.add_argument("--db", help="also record the best as a source='estimated' entry in this db dir or .json file")
    e.set_defaults(fn=cmd_estimate)


def _shape(text: str):
    try:
        m, n, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--shape expects MxNxK, e.g. 1x4096x4096, got {text!r}") from None
    if min(m, n, k) < 1:
        raise ValueError(f"--shape dimensions must be >= 1, got {text!r}")
    return m, n, k


def _token(args):
    from .protocol import read_token
    if not args.token_file:
        raise ValueError("--token-file is required (create one with `lutc runner --new-token FILE` and copy it "
                         "to both machines)")
    if os.name == "posix" and os.stat(args.token_file).st_mode & 0o077:
        print(f"lutc runner: warning: {args.token_file} is readable by other users; chmod 600 it",
              file=sys.stderr)
    return read_token(args.token_file)


def cmd_runner(args) -> int:
    from .protocol import new_token_file, parse_address
    try:
        if args.new_token:
            new_token_file(args.new_token)
            print(f"lutc runner: wrote a new token to {args.new_token}", file=sys.stderr)
            return 0
        token = _token(args)
        if args.connect:
            return _connect(args, token)
        host, port = parse_address(args.listen)
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    from .runner import Limits, Runner
    try:
        limits = Limits(max_payload=int(args.max_message_mb * (1 << 20)), idle_timeout=args.idle_timeout,
                        handshake_timeout=args.handshake_timeout, request_timeout=args.request_timeout,
                        max_sessions=args.max_sessions, max_problem_bytes=int(args.max_problem_mb * (1 << 20)))
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        runner = Runner(token, host, port, limits=limits)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    with runner:
        h, p = runner.address
        if h not in _LOOPBACK:
            print(f"lutc runner: warning: listening on {h}, not loopback: anyone who can reach this port and holds "
                  "the token can make this machine run lutc kernels; traffic is not encrypted (prefer an SSH "
                  "tunnel; see docs/targets.md)", file=sys.stderr)
        print(f"lutc runner: listening on {h}:{p}", file=sys.stderr, flush=True)
        try:
            runner.serve(once=args.once)
        except KeyboardInterrupt:
            print("lutc runner: stopped", file=sys.stderr)
    return 0


def _connect(args, token) -> int:
    from ..cli import _knobs
    from ..schedule import Schedule
    from .client import RemoteRunner, RunnerError
    from .protocol import parse_address
    shape = _shape(args.shape)
    sched = Schedule.make(args.bits, args.group_size, **_knobs(args.set))
    host, port = parse_address(args.connect)
    try:
        with RemoteRunner(host, port, token) as runner:
            res = runner.measure(sched, shape, target=args.target, timing={"repeats": args.repeats})
            res = {"runner": f"{host}:{port}", "device": runner.device["id"], "schedule": sched.to_dict(),
                   "shape": list(shape), **res}
    except RunnerError as e:
        raise UsageError(str(e)) from None
    print(json.dumps(res, indent=1, sort_keys=True))
    return 0 if res["status"] == "ok" else 1


def cmd_estimate(args) -> int:
    from ..backend.target import get_target
    from ..tuning.space import Problem, describe
    from .estimate import MODEL, device_fingerprint, estimated_entry, rank
    try:
        target = get_target(args.target)
        M, N, K = _shape(args.shape)
        problem = Problem(args.bits, args.group_size, M, N, K)
        ranked = rank(problem, target)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"# {problem.label} on {target.name}: static estimates ({MODEL}), not measurements")
    for t, s in ranked[:max(1, args.top)]:
        print(f"{t * 1e3:10.4f} ms (estimated)  {describe(s)}")
    if args.db:
        from ..tuning.db import db_file, updating
        fp = device_fingerprint(target)
        path = db_file(args.db, fp["id"])
        with updating(path, fp) as db:
            key_entry = estimated_entry(problem, target)
            old = db.get(problem.kernel, problem.bits, problem.group_size, M, N, K)
            if old is not None and old["source"] == "measured":
                print(f"lutc estimate: {path} already has a measured entry for {problem.label}; kept it",
                      file=sys.stderr)
            else:
                db.put(key_entry)
                print(f"lutc estimate: recorded an estimated entry in {path}", file=sys.stderr)
    return 0
