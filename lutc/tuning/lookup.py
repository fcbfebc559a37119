"""Schedule lookup for lutc.ops and the runtime: this device's db entry, else the nearest shape, else None."""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

from ..schedule import Schedule
from .db import TuningDB, TuningDBError, db_file, m_bucket, nearest_entry
from .device import host_device_id

ENV_VAR = "LUTC_TUNING_DB"
_LOCK = threading.Lock()
_FILES: dict = {}      # path -> TuningDB or None (missing or unusable), parsed once per process
_LOOKUPS: dict = {}    # (env, kernel, bits, group_size, M bucket, N, K) -> Schedule | None


def shipped_db_dir() -> Path:
    """tuning_db/ beside the lutc package (present in a source checkout)."""
    return Path(__file__).resolve().parents[2] / "tuning_db"


def user_db_dir() -> Path:
    from ..cache import cache_dir
    return cache_dir() / "tuning_db"


def search_path() -> list:
    """Where lookups read: $LUTC_TUNING_DB (os.pathsep-separated dirs or .json files; empty = none)
    if set, else the user's db dir, then the shipped tuning_db/. Earlier locations win."""
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [user_db_dir(), shipped_db_dir()]


def default_db_path() -> Path:
    """Where `lutc tune` writes without --db: the first location of the search path (the user's
    db dir unless $LUTC_TUNING_DB is set). Pass --db tuning_db to update the shipped db."""
    path = search_path()
    return path[0] if path else user_db_dir()


def _load(path: Path):
    if path in _FILES:
        return _FILES[path]
    db = None
    if path.is_file():
        try:
            db = TuningDB.load(path)
            if db.device.get("id") != host_device_id():
                db = None  # a .json file given explicitly may describe another machine
        except (TuningDBError, OSError) as e:
            warnings.warn(f"lutc: ignoring tuning db: {e}; using default schedules", RuntimeWarning, stacklevel=4)
    _FILES[path] = db
    return db


def load_dbs() -> list:
    """The usable dbs of this device along the search path (parsed once per process)."""
    dev = host_device_id()
    with _LOCK:
        dbs = [_load(db_file(p, dev)) for p in search_path()]
    return [d for d in dbs if d is not None]


def clear_cache():
    """Forget parsed files and lookups (after the tuner wrote a db, or the environment changed)."""
    with _LOCK:
        _FILES.clear()
        _LOOKUPS.clear()


def lookup_entry(kernel, bits, group_size, M, N, K) -> dict | None:
    """The exact entry from the first db that has one, else the nearest shape over all dbs."""
    dbs = load_dbs()
    for db in dbs:
        e = db.get(kernel, bits, group_size, M, N, K)
        if e is not None:
            return e
    seen, pool = set(), []
    for db in dbs:
        for k, e in db.entries.items():
            if k not in seen:
                seen.add(k)
                pool.append(e)
    return nearest_entry(pool, kernel, bits, group_size, M, N, K)


def lookup_schedule(kernel, bits, group_size, M, N, K, target="host") -> Schedule | None:
    """The tuned Schedule for this problem on the host, or None (then callers use the default).

    Cached per process, so lut_gemm can call it on every call. Non-host targets have no
    measurements and get None.
    """
    if not (target in (None, "host", "native") or getattr(target, "is_host", False)):
        return None
    key = (os.environ.get(ENV_VAR), kernel, bits, group_size, m_bucket(M), N, K)
    try:
        return _LOOKUPS[key]
    except KeyError:
        pass
    e = lookup_entry(kernel, bits, group_size, M, N, K)
    sched = Schedule.from_dict(e["schedule"]) if e is not None else None
    with _LOCK:
        _LOOKUPS[key] = sched
    return sched
