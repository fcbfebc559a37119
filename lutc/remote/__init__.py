"""Remote measurement for targets other than this machine: `lutc runner`, RemoteRunner, and the static cost model."""
from .client import RemoteMeasureWorker, RemoteRunner, RunnerError
from .estimate import estimate, rank

__all__ = ["RemoteRunner", "RemoteMeasureWorker", "RunnerError", "estimate", "rank"]
