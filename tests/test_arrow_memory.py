"""Every `mugv` command puts Arrow on the system allocator (its processes and their Ray workers), unless the user chose a pool."""

import os
import subprocess
import sys

PROBE = ("from mugv.cli import main; main(version=False); import pyarrow as pa, os; "
         "print(pa.default_memory_pool().backend_name, os.environ['ARROW_DEFAULT_MEMORY_POOL'])")


def _pool(env_pool: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if env_pool:
        env["ARROW_DEFAULT_MEMORY_POOL"] = env_pool
    return subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, capture_output=True,
                          text=True).stdout.split()


def test_a_command_allocates_arrow_memory_with_the_system_allocator():
    assert _pool(None) == ["system", "system"]  # the variable too: Ray's workers inherit it


def test_a_pool_the_user_chose_is_kept():
    assert _pool("mimalloc") == ["mimalloc", "mimalloc"]
