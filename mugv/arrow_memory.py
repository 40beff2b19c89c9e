"""Arrow's memory pool for a stage's process: the system allocator, so its peak does not grow with its tables."""

from __future__ import annotations

import os

# pyarrow workaround, kept here only. The pyarrow wheels default to mimalloc, which keeps the pages of
# freed buffers: reading ingest's clip table for 3,350 clips grew a process by 41 MiB against 24 MiB
# for 343 clips, and qc's peak grew 1.12x for 10x the data (bench/load.py: 389 -> 435 MiB). With
# the system allocator the same read costs 18 MiB and qc's peak grows 1.03x. Arrow's C++ default
# pool is chosen from ARROW_DEFAULT_MEMORY_POOL at its first allocation (and processes started from
# here, Ray's workers, inherit it), so `mugv`'s command callback sets it before any command imports
# pandas; pyarrow's own default is switched too, for callers that already allocated. Checked on
# pyarrow 25. A pool the user chose through the variable is left as it is.
POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"


def use_system_allocator() -> None:
    """Send this process's Arrow allocations (parquet reads and writes) to the system allocator."""
    os.environ.setdefault(POOL_VARIABLE, "system")
    if os.environ[POOL_VARIABLE] != "system":
        return
    import pyarrow as pa

    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())
