"""lutc.tuning: Optuna autotuning of kernel schedules per device, and the tuning db that lut_gemm reads."""
from .db import SCHEMA_VERSION, TuningDB, TuningDBError, entry_key, m_bucket
from .device import host_device_id, host_fingerprint
from .lookup import clear_cache, lookup_entry, lookup_schedule, search_path

__all__ = ["lookup_schedule", "lookup_entry", "clear_cache", "search_path", "TuningDB", "TuningDBError",
           "SCHEMA_VERSION", "entry_key", "m_bucket", "host_fingerprint", "host_device_id"]
