"""Which DVC remote a pipeline run syncs with, and the `dvc pull` / `dvc push` commands it runs.

A run pulls the outputs of its stages before running them (so a fresh worker starts from what the
last run pushed, and DVC skips what is up to date) and pushes them after. The remote is
`pipeline.remote`, else the repository's default remote (`dvc remote add -d`); with neither, or
with `pipeline.sync_remote: false`, nothing is pulled or pushed. S3 endpoint and credentials come
from the remote's DVC config or the standard AWS environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...).
"""

from __future__ import annotations

import os
import sys


def configured_remotes(root: str | os.PathLike) -> tuple[dict[str, str], str | None]:
    """({remote name: url}, the default remote's name or None) from the repository's DVC config."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        config = repo.config
        remotes = {name: section.get("url", "") for name, section in (config.get("remote") or {}).items()}
        return remotes, config.get("core", {}).get("remote")


def choose_remote(remotes: dict[str, str], default: str | None, wanted: str | None, enabled: bool) -> str | None:
    """The remote to pull from and push to, or None for no sync; ValueError naming a remote DVC does not know."""
    if not enabled:
        return None
    name = wanted or default
    if name is None:
        return None
    if name not in remotes:
        known = ", ".join(sorted(remotes)) or "none (dvc remote add -d NAME URL)"
        source = "pipeline.remote" if wanted else "DVC's core.remote"
        raise ValueError(f"{source} names DVC remote {name!r}, which is not configured; configured remotes: {known}")
    return name


def sync_remote(root: str | os.PathLike, wanted: str | None, enabled: bool) -> str | None:
    """The remote a run on the repository at `root` syncs with (see choose_remote)."""
    if not enabled:
        return None
    remotes, default = configured_remotes(root)
    return choose_remote(remotes, default, wanted, enabled)


def sync_command(direction: str, remote: str, stages: list[str]) -> list[str]:
    """`dvc pull` (missing objects allowed: a first run finds an empty remote) or `dvc push` of `stages`' outputs."""
    if direction not in ("pull", "push"):
        raise ValueError(f"direction must be pull or push, not {direction!r}")
    extra = ["--allow-missing"] if direction == "pull" else []
    return [sys.executable, "-m", "dvc", direction, "--remote", remote, *extra, *stages]
