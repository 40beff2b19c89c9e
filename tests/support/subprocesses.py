"""Run a test subprocess in its own session and clean up what it leaves behind (torch_dist's writer helpers)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def run_in_own_session(cmd: list[str], log: Path, timeout: float, env: dict | None = None,
                       kill_when: Callable[[], bool] | None = None, poll_s: float = 0.05) -> tuple[int, str]:
    """Run `cmd` from the repository root, output to `log`; SIGKILL it once `kill_when()` is true.

    The torch.distributed variables of this (pytest) process are not inherited.
    Returns (return code, log text). Megatron's torch_dist writer leaves a multiprocessing manager
    behind when its parent is killed; the whole session this function started is killed at the end.
    """
    base = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**base, **(env or {})})
        try:
            if kill_when is None:
                proc.wait(timeout=timeout)
            else:
                waited = 0.0
                while proc.poll() is None and waited < timeout:
                    if kill_when():
                        proc.send_signal(signal.SIGKILL)
                        break
                    time.sleep(poll_s)
                    waited += poll_s
                proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return proc.returncode, log.read_text()
