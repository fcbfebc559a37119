"""`lutc tune` and `lutc db show|merge`: the tuner's command-line plugin (loaded by lutc.cli)."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from ..errors import UsageError


def register(sub):
    t = sub.add_parser("tune", help="autotune LUT-GEMM schedules with Optuna and record them in the tuning db")
    t.add_argument("--target", default="host", help="host (default), or a named target measured through --runner "
                   "or estimated with --estimate")
    r = t.add_mutually_exclusive_group()
    r.add_argument("--runner", metavar="HOST:PORT", help="measure on a `lutc runner` on the device (docs/targets.md)")
    r.add_argument("--estimate", action="store_true", help="record the static cost model's pick for --target "
                   "(source=estimated) instead of measuring")
    t.add_argument("--token-file", help="the runner's shared token file (with --runner)")
    g = t.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="comma-separated models: llama-2-7b, smollm2-135m")
    g.add_argument("--shapes", help="comma-separated weight shapes NxK (N outputs, K inputs), e.g. 4096x11008")
    t.add_argument("--bits", default="2,3,4", help="weight bit widths (default 2,3,4)")
    t.add_argument("--group-size", type=int, default=128)
    t.add_argument("--m", default="1,128", help="activation rows M to tune for (default 1,128)")
    t.add_argument("--trials", type=int, default=32, help="trials per shape in the study (resumed studies count "
                   "their earlier trials; default 32)")
    t.add_argument("--timeout", type=float, default=120.0, help="seconds one trial may take (default 120)")
    t.add_argument("--storage", help="Optuna storage URL (sqlite:///..., postgresql://...) or journal:PATH; "
                   "default: a SQLite file under the user cache")
    t.add_argument("--study", help="study name prefix (default: lutc-<device>-<code hash>)")
    t.add_argument("--db", help="tuning db directory or .json file to record results in (default: "
                   "$LUTC_TUNING_DB or the user's tuning_db)")
    t.add_argument("--no-db", action="store_true", help="tune and report, but record nothing")
    t.add_argument("--seed", type=int, default=0, help="sampler seed (give concurrent workers different seeds)")
    t.add_argument("--repeats", type=int, default=7, help="timed repeats per trial (default 7); their median "
                   "(or min, with --stat min) is kept")
    t.add_argument("--final-rounds", type=int, default=5, help="interleaved rounds re-timing the best schedules "
                   "against the default before recording (default 5)")
    t.add_argument("--retries", type=int, default=2, help="re-time a measurement up to N times (pausing) while "
                   "other processes use more than a quarter core (default 2)")
    t.add_argument("--stat", choices=("median", "min"), default="median",
                   help="statistic of the repeats to minimize: median (default) or min (estimates the "
                   "uncontended time when other processes load the machine)")
    t.add_argument("--cache", choices=("cold", "hot"), default="cold",
                   help="cold (default): time weights streamed from DRAM, as in decoding; hot: weights cached")
    t.add_argument("--plot", metavar="DIR", help="write optimization-history and importance PNGs per study")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_tune)

    d = sub.add_parser("db", help="inspect and merge tuning db files")
    dsub = d.add_subparsers(dest="db_cmd", required=True)
    s = dsub.add_parser("show", help="list a device's tuned entries")
    s.add_argument("--device", help="device id (default: this machine), e.g. x86_64-znver4-2c")
    s.add_argument("--db", help="db directory or .json file (default: the lookup search path)")
    s.set_defaults(fn=cmd_db_show)
    v = dsub.add_parser("verify", help="re-time this machine's entries against the default schedule")
    v.add_argument("--db", help="db directory or .json file (default: the lookup search path)")
    v.add_argument("--match", default="", help="only entries whose key contains this, e.g. m1/4096x")
    v.add_argument("--rounds", type=int, default=5, help="interleaved default/tuned rounds (default 5)")
    v.add_argument("--repeats", type=int, default=7)
    v.add_argument("--stat", choices=("median", "min"), default="median")
    v.add_argument("--cache", choices=("cold", "hot"), default="cold")
    v.set_defaults(fn=cmd_db_verify)
    m = dsub.add_parser("merge", help="merge db files of one device")
    m.add_argument("inputs", nargs="+", metavar="FILE.json")
    m.add_argument("-o", "--output", required=True, metavar="OUT.json")
    m.set_defaults(fn=cmd_db_merge)


def _problems(args):
    from .shapes import model_shapes, parse_ints, parse_shapes
    from .space import Problem
    if args.model:
        shapes = []
        for name in filter(None, (s.strip() for s in args.model.split(","))):
            shapes += [s for s in model_shapes(name) if s not in shapes]
    else:
        shapes = parse_shapes(args.shapes)
    bits = parse_ints(args.bits, "bits", 1, 4)
    ms = parse_ints(args.m, "m", 1)
    if args.group_size < 1:
        raise ValueError(f"--group-size must be >= 1, got {args.group_size}")
    return [Problem(b, args.group_size, m, n, k) for b in bits for m in ms for (n, k) in shapes]


def cmd_tune(args) -> int:
    from .db import TuningDBError, db_file, valid_device_id
    from .lookup import default_db_path
    from .report import ms, results_table, save_plots
    from .search import progress_bar, tune_problem
    from .worker import WorkerSetupError
    try:
        problems = _problems(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if min(args.trials, args.repeats, args.final_rounds) < 1 or args.retries < 0 or args.timeout <= 0:
        raise UsageError("--trials, --repeats and --final-rounds must be >= 1, --retries >= 0 and --timeout > 0")
    db_path = None if args.no_db else Path(args.db) if args.db else default_db_path()
    if args.estimate:
        return _estimate(args, problems, db_path)
    storage = _storage(args.storage)
    try:
        measure = _measurement(args)
    except (ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    if measure is None:
        return 2
    fp = measure["device"]
    try:
        valid_device_id(fp.get("id") if isinstance(fp, dict) else None, "the runner's device fingerprint")
    except TuningDBError as e:
        raise UsageError(str(e)) from None
    if db_path is not None:
        check_db_writable(db_file(db_path, fp["id"]))
    print(f"lutc tune: device {fp['id']} ({fp.get('cpu_model') or fp['cpu']}, {fp['isa']}); {len(problems)} "
          f"problems, {args.trials} trials each; db {db_file(db_path, fp['id']) if db_path else '(none)'}",
          file=sys.stderr)
    results, code = [], 0
    try:
        for p in problems:
            r = tune_problem(p, storage=storage, trials=args.trials, timeout=args.timeout, seed=args.seed,
                             prefix=args.study, db_path=db_path, repeats=args.repeats, retries=args.retries,
                             stat=args.stat, final_rounds=args.final_rounds, cache=args.cache,
                             progress=None if args.quiet else progress_bar, **measure)
            results.append(r)
            sp = f"{r.speedup:.2f}x" if r.speedup else "-"
            print(f"lutc tune: {p.label}: {r.trials} trials ({r.ran} here, {r.failed} failed), {r.minutes:.1f} min, "
                  f"converged at trial {r.converged_trial}; default {ms(r.default_time_s)} ms, "
                  f"tuned {ms(r.time_s)} ms ({sp}) {r.note}", file=sys.stderr, flush=True)
            if args.plot:
                import optuna
                save_plots(optuna.load_study(study_name=r.study, storage=storage), args.plot)
    except KeyboardInterrupt:
        print("\nlutc tune: interrupted; rerun the same command to resume the studies", file=sys.stderr)
        code = 130
    except (TuningDBError, WorkerSetupError) as e:
        print(f"lutc tune: {e}", file=sys.stderr)
        code = 1
    if results:
        print(results_table(results))
        if args.cache == "cold" and not args.runner:
            _roofline(results)
    return code


def _storage(url):
    """The Optuna storage of --storage, opened before any tuning; UsageError if it cannot be."""
    from .search import open_storage
    try:
        return open_storage(url)
    except ImportError as e:
        raise UsageError(f"--storage {url!r}: a driver is missing ({e})") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy/optuna raise many types for a bad URL
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"--storage {url!r}: cannot open it ({type(e).__name__}: {first})") from None


def check_db_writable(path: Path):
    """UsageError unless the db file `path` can be written (its directory created, its lock file and
    a temp file made there): checked before tuning, not after the trials."""
    from .db import lock_path
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "is a directory", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path(path), "a"):
            pass
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UsageError(f"--db {path}: cannot write the tuning db there ({e.strerror or e})") from None


def _roofline(results):
    """Print this machine's DRAM read bandwidth, measured now, beside the GEMV (M=1) results."""
    from .device import usable_cores
    from .report import weight_bytes
    from .timing import read_bandwidth
    gemv = [r for r in results if r.problem.M == 1 and r.time_s]
    if gemv:
        bw = read_bandwidth(usable_cores())
        frac = [weight_bytes(r.problem) / r.time_s / bw for r in gemv]
        print(f"DRAM read bandwidth now: {bw / 1e9:.1f} GB/s ({usable_cores()} threads, numpy); tuned M=1 "
              f"kernels stream weights at {100 * min(frac):.0f}-{100 * max(frac):.0f}% of it")


def _measurement(args):
    """tune_problem's measurement arguments: this host, or a remote runner; None after refusing."""
    from ..backend.target import get_target, native_mismatch, runnable
    from .device import host_fingerprint
    from .worker import MeasureWorker
    host_target = args.target in ("host", "native")
    if args.runner:
        from ..remote import RemoteMeasureWorker, RemoteRunner, RunnerError
        target = None if host_target else get_target(args.target).name
        runner = RemoteRunner.from_address(args.runner, token_file=args.token_file)
        try:
            info = runner.connect()
        except RunnerError as e:
            raise OSError(str(e)) from None

        def make_worker(problem, timeout):
            return RemoteMeasureWorker(problem, runner, target=target, timeout=timeout)
        return {"make_worker": make_worker, "device": runner.device, "cores": int(info["cores"])}
    if not host_target:
        t = get_target(args.target)
        if native_mismatch(t) is not None:
            try:
                runnable(t)
            except Exception as e:  # noqa: BLE001 - NativeOnlyError names the runner and --estimate
                raise UsageError(str(e)) from None
        # e.g. --target m2 on an Apple-silicon Mac: measure natively, exactly as for --target host
        # (lut_gemm runs host code and reads the host device's entries, so that is where they go)
        print(f"lutc tune: {t.name} code runs natively on this machine: measuring here as --target host "
              f"(this CPU's code, recorded for device {host_fingerprint()['id']})", file=sys.stderr)
    return {"make_worker": MeasureWorker, "device": host_fingerprint(), "cores": None}


def _estimate(args, problems, db_path) -> int:
    """--estimate: the static cost model's best schedule per problem, recorded as source=estimated
    (a measured entry already in the db is kept)."""
    from ..backend.target import get_target
    from ..remote.estimate import device_fingerprint, estimated_entry
    from ..schedule import Schedule
    from .db import TuningDBError, db_file, updating
    from .report import results_table
    from .search import TuneResult
    try:
        target = get_target(args.target)
    except ValueError as e:
        raise UsageError(str(e)) from None
    fp, results = device_fingerprint(target), []
    if db_path is not None:
        check_db_writable(db_file(db_path, fp["id"]))
    try:
        for p in problems:
            e = estimated_entry(p, target)
            note = "estimated"
            if db_path is not None:
                with updating(db_file(db_path, fp["id"]), fp) as db:
                    old = db.get(p.kernel, p.bits, p.group_size, p.M, p.N, p.K)
                    if old is not None and old["source"] == "measured":
                        note = "estimated; kept the measured entry"
                    else:
                        db.put(e)
            results.append(TuneResult(p, "(estimate)", best=Schedule.from_dict(e["schedule"]), time_s=e["time_s"],
                                      default_time_s=e["default_time_s"], note=note))
    except TuningDBError as err:
        print(f"lutc tune: {err}", file=sys.stderr)
        return 1
    print(f"# {target.name}: static estimates, not measurements; db "
          f"{db_file(db_path, fp['id']) if db_path else '(none)'}")
    print(results_table(results))
    return 0


def _show_paths(args, device: str):
    from .db import db_file
    from .lookup import search_path
    if args.db:
        return [db_file(args.db, device)]
    return [db_file(p, device) for p in search_path()]


def cmd_db_show(args) -> int:
    from .db import TuningDB, TuningDBError
    from .device import host_device_id
    from .report import entries_table
    device = args.device or host_device_id()
    shown = 0
    try:
        paths = _show_paths(args, device)
    except TuningDBError as e:
        raise UsageError(str(e)) from None
    for path in paths:
        if not path.exists():
            continue
        try:
            db = TuningDB.load(path)
        except TuningDBError as e:
            print(f"lutc db show: {e}", file=sys.stderr)
            return 1
        print(entries_table(db))
        shown += 1
    if not shown:
        print(f"lutc db show: no tuning db for device {device} in {', '.join(map(str, _show_paths(args, device)))}",
              file=sys.stderr)
        return 1
    return 0


def cmd_db_verify(args) -> int:
    """Each entry's schedule against the default, interleaved, on this machine: one row per entry."""
    from .db import TuningDB, TuningDBError
    from .device import host_device_id
    from .report import ms
    from .search import verify_entry
    paths = [p for p in _show_paths(args, host_device_id()) if p.exists()]
    if not paths:
        print(f"lutc db verify: no tuning db for this device ({host_device_id()})", file=sys.stderr)
        return 1
    try:
        db = TuningDB.load(paths[0])
    except TuningDBError as e:
        print(f"lutc db verify: {e}", file=sys.stderr)
        return 1
    print(f"# {paths[0]}: {args.stat} of {args.repeats} repeats, median of {args.rounds} interleaved rounds, "
          f"{args.cache} cache")
    print(f"{'key':<36} {'default ms':>11} {'tuned ms':>10} {'speedup':>8} {'spread':>7} {'busy':>5}")
    for key in sorted(k for k in db.entries if args.match in k):
        try:
            d, t = verify_entry(db.entries[key], args.rounds, args.repeats, 0, args.stat, args.cache)
        except RuntimeError as e:   # a measurement failed (inaccurate, crashed, timed out)
            print(f"{key:<36} failed: {e}", flush=True)
            continue
        print(f"{key:<36} {ms(d['value_s']):>11} {ms(t['value_s']):>10} {d['value_s'] / t['value_s']:>7.2f}x "
              f"{100 * t['spread']:>6.1f}% {max(d['contention'], t['contention']):>5.2f}", flush=True)
    return 0


def cmd_db_merge(args) -> int:
    from .db import TuningDB, TuningDBError, file_lock
    out = Path(args.output)
    try:
        # under the output's lock, as `lutc tune` writing the same file holds it: no lost update
        with file_lock(out):
            dbs = [TuningDB.load(p) for p in args.inputs]
            if out.exists():
                TuningDB.load(out)  # refuse to replace a file we cannot read: it may be someone's data
            merged = dbs[0]
            for db in dbs[1:]:
                merged = merged.merge(db)
            merged.save(out)
    except (TuningDBError, OSError) as e:
        print(f"lutc db merge: {e}", file=sys.stderr)
        return 1
    print(f"lutc db merge: {len(merged.entries)} entries -> {out}", file=sys.stderr)
    return 0
