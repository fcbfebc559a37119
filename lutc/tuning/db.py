"""tuning_db/<device>.json: versioned schema, validation, atomic locked writes, merge and nearest-shape search."""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
from pathlib import Path

from ..cache import atomic_write
from ..schedule import Schedule, m_bucket
from .device import check_device_id

SCHEMA_VERSION = 1
MAX_DIM = 1 << 24      # N, K and m_bucket of an entry are in 1..MAX_DIM
MAX_DB_BYTES = 64 << 20
SOURCES = ("measured", "estimated")
_ENTRY_FIELDS = {  # name -> accepted types
    "kernel": (str,), "bits": (int,), "group_size": (int,), "m_bucket": (int,), "N": (int,), "K": (int,),
    "schedule": (dict,), "time_s": (int, float), "default_time_s": (int, float, type(None)),
    "lutc_version": (str,), "date": (str,), "source": (str,),
}


class TuningDBError(ValueError):
    """A tuning db file that cannot be used: unreadable, corrupt, wrong schema or wrong device."""


def valid_device_id(dev, where: str | None = None) -> str:
    """check_device_id, raising TuningDBError (prefixed with `where`)."""
    try:
        return check_device_id(dev)
    except ValueError as e:
        raise TuningDBError(f"{where}: {e}" if where else str(e)) from None


def _positive_finite(v) -> bool:
    try:
        return math.isfinite(v) and v > 0
    except OverflowError:    # an int too large for a float
        return False


def entry_key(kernel: str, bits: int, group_size: int, mb: int, N: int, K: int) -> str:
    """The db key: kernel, bits, group size, M bucket and shape (group size is never left out)."""
    return f"{kernel}/w{bits}/g{group_size}/m{mb}/{N}x{K}"


def make_entry(schedule: Schedule, M: int, N: int, K: int, time_s: float, default_time_s, source="measured",
               **extra) -> dict:
    """A db entry for `schedule` measured (or estimated) on an (M, N, K) problem."""
    from .. import __version__
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    e = {"kernel": schedule.kernel, "bits": schedule.bits, "group_size": schedule.group_size,
         "m_bucket": m_bucket(M), "N": int(N), "K": int(K), "schedule": schedule.to_dict(),
         "time_s": float(time_s), "default_time_s": None if default_time_s is None else float(default_time_s),
         "lutc_version": __version__, "source": source,
         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    e.update(extra)
    return e


def key_of(e: dict) -> str:
    return entry_key(e["kernel"], e["bits"], e["group_size"], e["m_bucket"], e["N"], e["K"])


def _check_entry(key: str, e) -> str | None:
    """Why entry `e` stored under `key` is invalid, or None."""
    if not isinstance(e, dict):
        return f"entry {key!r} is a {type(e).__name__}, expected an object"
    for name, types in _ENTRY_FIELDS.items():
        if name not in e:
            return f"entry {key!r} lacks field {name!r}"
        if isinstance(e[name], bool) or not isinstance(e[name], types):
            return f"entry {key!r}: field {name!r} has type {type(e[name]).__name__}"
    if e["source"] not in SOURCES:
        return f"entry {key!r}: source must be one of {SOURCES}, got {e['source']!r}"
    if not 1 <= e["bits"] <= 8 or e["group_size"] < 1:
        return f"entry {key!r}: bits must be in 1..8 and group_size >= 1, got {e['bits']} and {e['group_size']}"
    for name in ("N", "K", "m_bucket"):
        if not 1 <= e[name] <= MAX_DIM:
            return f"entry {key!r}: {name} must be in 1..{MAX_DIM}, got {e[name]}"
    if e["m_bucket"] & (e["m_bucket"] - 1):
        return f"entry {key!r}: m_bucket must be a power of two, got {e['m_bucket']}"
    for name in ("time_s", "default_time_s"):
        v = e[name]
        if v is not None and not _positive_finite(v):
            return f"entry {key!r}: {name} must be a finite number > 0, got {v!r}"
    if key_of(e) != key:
        return f"entry {key!r} describes {key_of(e)!r}"
    try:
        s = Schedule.from_dict(e["schedule"])
    except (TypeError, ValueError) as err:
        return f"entry {key!r}: bad schedule: {err}"
    if (s.kernel, s.bits, s.group_size) != (e["kernel"], e["bits"], e["group_size"]):
        return f"entry {key!r}: schedule is for {s.kernel} w{s.bits} g{s.group_size}"
    return None


class TuningDB:
    """The tuned schedules of one device: {'schema', 'device', 'entries': {key: entry}}."""

    def __init__(self, device: dict, entries: dict | None = None, path: Path | None = None):
        self.device = dict(device)
        self.entries = dict(entries or {})
        self.path = Path(path) if path is not None else None

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path) -> "TuningDB":
        """Parse and validate a db file; any problem raises TuningDBError naming the file."""
        path = Path(path)
        with open(path, "rb") as f:
            raw = f.read(MAX_DB_BYTES + 1)
        if len(raw) > MAX_DB_BYTES:
            raise TuningDBError(f"{path}: larger than {MAX_DB_BYTES} bytes; not a tuning db")
        return cls.from_bytes(raw, path)

    @classmethod
    def from_bytes(cls, raw: bytes, path=None) -> "TuningDB":
        """Parse and validate the bytes of a db file; any problem raises TuningDBError."""
        where = str(path) if path is not None else "<tuning db>"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TuningDBError(f"{where}: not a UTF-8 text file ({e})") from None
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            why = str(e) if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            raise TuningDBError(f"{where}: corrupt tuning db (invalid JSON: {why}); fix or delete it, "
                                "it will not be overwritten") from None
        return cls.from_data(data, path)

    @classmethod
    def from_data(cls, data, path=None) -> "TuningDB":
        where = str(path) if path is not None else "<tuning db>"

        def bad(msg):
            raise TuningDBError(f"{where}: {msg}")
        if not isinstance(data, dict):
            bad(f"expected a JSON object, got {type(data).__name__}")
        schema = data.get("schema")
        if schema != SCHEMA_VERSION:
            newer = isinstance(schema, int) and schema > SCHEMA_VERSION
            bad(f"schema version {schema!r}, this lutc reads version {SCHEMA_VERSION}"
                + (" (written by a newer lutc)" if newer else ""))
        device, entries = data.get("device"), data.get("entries")
        if not isinstance(device, dict) or not isinstance(device.get("id"), str):
            bad("missing the 'device' fingerprint (an object with an 'id')")
        valid_device_id(device["id"], where)
        if not isinstance(entries, dict):
            bad("'entries' must be an object keyed by entry key")
        for k, e in entries.items():
            why = _check_entry(k, e)
            if why:
                bad(why)
        return cls(device, entries, path)

    def to_data(self) -> dict:
        return {"schema": SCHEMA_VERSION, "device": self.device,
                "entries": {k: self.entries[k] for k in sorted(self.entries)}}

    def save(self, path=None):
        """Atomic write (temp file + rename): readers see the old file or the new one."""
        path = Path(path or self.path)
        atomic_write(path, (json.dumps(self.to_data(), indent=1, sort_keys=True) + "\n").encode())
        self.path = path

    # ------------------------------------------------------------------ entries
    def put(self, entry: dict):
        key = key_of(entry)
        why = _check_entry(key, entry)
        if why:
            raise ValueError(why)
        self.entries[key] = entry

    def get(self, kernel, bits, group_size, M, N, K) -> dict | None:
        return self.entries.get(entry_key(kernel, bits, group_size, m_bucket(M), N, K))

    def nearest(self, kernel, bits, group_size, M, N, K) -> dict | None:
        """The exact entry, else the same kernel/bits/group entry nearest in log2 (M bucket, N, K)."""
        return nearest_entry(self.entries.values(), kernel, bits, group_size, M, N, K)

    def merge(self, other: "TuningDB") -> "TuningDB":
        """Union of two dbs of one device; on a shared key keep the better entry (see _better)."""
        if other.device.get("id") != self.device.get("id"):
            raise TuningDBError(f"cannot merge db files of different devices: {self.device.get('id')!r} "
                                f"({self.path}) and {other.device.get('id')!r} ({other.path})")
        out = TuningDB(self.device, self.entries)
        for k, e in other.entries.items():
            if k not in out.entries or _better(e, out.entries[k]):
                out.entries[k] = e
        return out


def _better(a: dict, b: dict) -> bool:
    """Measured beats estimated; then the faster time; then the newer date."""
    ra = (a["source"] == "measured", -a["time_s"], a["date"])
    rb = (b["source"] == "measured", -b["time_s"], b["date"])
    return ra > rb


def _distance(e: dict, mb: int, N: int, K: int) -> float:
    # the M regime (GEMV vs prefill) matters most, so its log distance counts double
    return (2 * abs(math.log2(e["m_bucket"] / mb)) + abs(math.log2(e["N"] / N))
            + abs(math.log2(e["K"] / K)))


def nearest_entry(entries, kernel, bits, group_size, M, N, K) -> dict | None:
    mb = m_bucket(M)
    same = [e for e in entries if (e["kernel"], e["bits"], e["group_size"]) == (kernel, bits, group_size)]
    if not same or N < 1 or K < 1:
        return None
    return min(same, key=lambda e: (_distance(e, mb, N, K), key_of(e)))


# ---------------------------------------------------------------------- locked update
def lock_path(path) -> Path:
    """The lock file of db `path`: '.<name>.lock' beside it, so every writer of that file (whatever
    its HOME or LUTC_CACHE_DIR) locks the same file. Never deleted (deleting lock files races)."""
    path = Path(path).resolve()
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def file_lock(path):
    """An exclusive advisory lock (flock) for read-modify-write of the db file `path`."""
    import fcntl
    lp = lock_path(path)
    lp.parent.mkdir(parents=True, exist_ok=True)
    with open(lp, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_file_lock = file_lock


@contextlib.contextmanager
def updating(path, device: dict):
    """Load (or start) the db at `path` under a lock, yield it, then save it atomically.

    A corrupt file or one of another device raises TuningDBError and is left untouched.
    """
    path = Path(path)
    valid_device_id(device.get("id"))
    with file_lock(path):
        if path.exists():
            db = TuningDB.load(path)
            if db.device.get("id") != device["id"]:
                raise TuningDBError(f"{path}: holds device {db.device.get('id')!r}, this is {device['id']!r}")
            db.device = dict(device)
        else:
            db = TuningDB(device, path=path)
        yield db
        db.save(path)


def db_file(path, device_id: str) -> Path:
    """A db location given as a directory (-> <dir>/<device>.json) or as a .json file.

    The device id is checked (check_device_id): an id such as '../x' from a remote runner
    raises TuningDBError instead of naming a file outside the directory."""
    valid_device_id(device_id)
    path = Path(os.path.expanduser(str(path)))
    return path if path.suffix == ".json" else path / f"{device_id}.json"
