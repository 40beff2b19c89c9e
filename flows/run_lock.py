"""One pipeline run per checkout: an exclusive file lock under `.dvc/tmp/` that says which run holds it.

Two flow runs on one checkout would interleave `dvc repro` of different stages and overwrite each
other's outputs and dvc.lock. The lock is `fcntl.flock` on `.dvc/tmp/mugv-pipeline.lock`: the kernel
releases it when its holder exits, killed or not, so a crashed run never leaves the checkout locked.
The holder writes who it is (flow run, pid, host, start time) into the file for the run that is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = Path(".dvc") / "tmp" / "mugv-pipeline.lock"
POLL_S = 0.5


class CheckoutBusy(RuntimeError):
    """Another pipeline run holds the checkout's lock (past the wait, if any): one line naming it."""


def describe_holder(info: dict) -> str:
    """`flow run 'NAME' (ID), pid N on HOST, since T` from what a holder wrote; `an unknown run` when empty."""
    if not info:
        return "an unknown run"
    who = f"flow run '{info['flow_run_name']}' ({info['flow_run_id']}), " if info.get("flow_run_id") else ""
    return f"{who}pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}"


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def checkout_lock(root: str | os.PathLike, wait_s: float = 0.0, holder: dict | None = None) -> Iterator[Path]:
    """Hold the checkout's pipeline lock for the block; wait at most `wait_s` seconds for it, else CheckoutBusy.

    `holder` (e.g. the Prefect flow run's id and name) is written into the lock file next to pid, host, time.
    """
    path = Path(root) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    waited = f" after waiting {wait_s:g} s" if wait_s else ""
                    raise CheckoutBusy(
                        f"another pipeline run holds {path}{waited}: {describe_holder(_read_holder(path))}; "
                        "wait for it to finish (pipeline.lock_wait_s sets how long a run waits)"
                    ) from None
                time.sleep(POLL_S)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(holder or {})}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # the file stays (another run may be waiting on it); only its holder goes
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
