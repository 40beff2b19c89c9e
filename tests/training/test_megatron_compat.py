"""The Megatron CPU workaround: still needed upstream, applied only inside init_parallel, version-checked; `import mugv` is inert."""

import subprocess
import sys
import textwrap

import pytest
import torch

from mugv.training import megatron_compat

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="the workaround is for machines without CUDA")

SAVE_ONE_TENSOR = """
import sys, torch, torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing import ShardedTensor

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
parallel_state.initialize_model_parallel()
try:
    dist_checkpointing.save({"w": ShardedTensor.from_rank_offsets("w", torch.ones(3))}, sys.argv[1])
except Exception as error:
    print("RAISED", type(error).__name__, error)
else:
    print("SAVED")
"""


def _run(code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@CPU_ONLY
def test_upstream_still_needs_the_workaround(tmp_path):
    """Unpatched, Megatron's torch_dist saver still calls CUDA on a CPU process group.

    When this fails (the save works unpatched), upstream fixed it: drop the patches in
    mugv/training/megatron_compat.py and this test.
    """
    out = _run(SAVE_ONE_TENSOR, str(tmp_path))
    assert "RAISED" in out, f"megatron-core no longer needs the CPU workaround ({out.strip()}): remove it"
    assert "CUDA" in out


@CPU_ONLY
def test_patches_live_only_between_init_and_destroy_parallel(tmp_path):
    out = _run(
        """
        import sys, torch
        from megatron.core import dist_checkpointing
        from megatron.core.dist_checkpointing import ShardedTensor
        from mugv.training.distributed import destroy_parallel, init_parallel

        original = torch.cuda.current_device, torch.cuda.synchronize
        print("before", (torch.cuda.current_device, torch.cuda.synchronize) == original)
        init_parallel()
        print("inside", torch.cuda.current_device() == torch.device("cpu"))
        dist_checkpointing.save({"w": ShardedTensor.from_rank_offsets("w", torch.ones(3))}, sys.argv[1])
        destroy_parallel()
        print("after", (torch.cuda.current_device, torch.cuda.synchronize) == original)
        """,
        str(tmp_path),
    )
    assert out.split() == ["before", "True", "inside", "True", "after", "True"]


def test_another_megatron_version_is_flagged(monkeypatch):
    assert megatron_compat.check_megatron_version()  # the pinned megatron-core
    monkeypatch.setattr(megatron_compat, "megatron_version", lambda: (0, 17, 0))
    with pytest.warns(RuntimeWarning, match="written for megatron-core 0.16.x, found 0.17.0"):
        assert not megatron_compat.check_megatron_version()


def test_import_mugv_has_no_side_effects():
    out = _run(
        """
        import os, sys, warnings
        filters, environ = list(warnings.filters), dict(os.environ)
        import mugv
        print(warnings.filters == filters, dict(os.environ) == environ, "megatron" in sys.modules)
        """
    )
    assert out.split() == ["True", "True", "False"]
