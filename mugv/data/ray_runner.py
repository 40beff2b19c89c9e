"""Run one function per task on Ray (an embedded local Ray, or a cluster): outcomes in task order, crashes retried, hung tasks cancelled."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import Field

from mugv.section import Section

T = TypeVar("T")
R = TypeVar("R")

CRASHED = "worker process died while processing it"
QUEUED_PER_SLOT = 1  # Ray tasks waiting behind each running one: a worker starts its next task without a round trip
TIMED_OUT = "timed out after"


def timed_out(seconds: float) -> str:
    """The error of a task cancelled at its time limit: 'timed out after N s'."""
    return f"{TIMED_OUT} {seconds:g} s"


class RayConfig(Section):
    """Where a data stage's per-video tasks run, how many at once, and what happens to a task that dies or hangs."""

    address: str | None = Field(
        None, description="a Ray cluster (ray://host:10001 or host:6379); null: RAY_ADDRESS if set, else an embedded local Ray"
    )
    max_retries: int = Field(1, ge=0, description="re-runs of a task whose worker process died (segfault, OOM kill)")
    task_timeout_s: float = Field(600.0, gt=0, description="per-video limit; a task past it is cancelled and quarantined")
    per_task: int = Field(
        1, ge=1, description="videos (clips) per Ray task, to spread Ray's per-task cost; a task whose worker dies "
        "or times out is split, and its videos run again one per task"
    )


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """A task's result, or why there is none (an exception escaped it, its process died, it timed out)."""

    result: R | None = None
    error: str | None = None


def describe(exc: BaseException) -> str:
    """'worker error: <Type>: <message>' of an exception that escaped a task."""
    return f"worker error: {type(exc).__name__}: {exc}"


def local_cpus(workers: int | None) -> int:
    """The CPUs of an embedded Ray, so how many tasks run at once: `workers`, or every core of this machine."""
    return workers or os.cpu_count() or 1


def worker_threads(cfg: RayConfig, workers: int | None) -> int:
    """Threads a worker's native libraries (OpenCV, torch) may use so that the workers share the cores: 0 (their
    own default) when tasks run in this process, else this machine's cores over the CPUs of the Ray."""
    return 0 if in_process(cfg, workers) else max(1, (os.cpu_count() or 1) // local_cpus(workers))


def cluster_address(cfg: RayConfig) -> str | None:
    """The cluster to join: `address`, else RAY_ADDRESS; None means start an embedded local Ray."""
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def in_process(cfg: RayConfig, workers: int | None) -> bool:
    """True when tasks run in this process (`workers` 1 and no cluster named): no Ray, no crash isolation."""
    return workers == 1 and cluster_address(cfg) is None


# Ray 2.x workaround, kept here only. An embedded Ray resolves its node address to this machine's
# network IP even when told 127.0.0.1 (ray._private.services.resolve_ip_for_localhost), and its
# gRPC servers (GCS, raylet, every worker) then listen on all interfaces. Ray keeps its servers on
# loopback only when the node address is 127.0.0.1, which it picks itself when
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is 0 (ray_constants.ENABLE_RAY_CLUSTER, read at import; the
# children Ray starts read it from the environment). Checked on Ray 2.55 by
# tests/data/test_ray_runner.py, which lists the sockets an embedded Ray opens.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _serve_on_loopback_only(embedded: bool) -> None:
    """Keep an embedded Ray's servers on 127.0.0.1; a driver joining a cluster gets Ray's own default."""
    from ray._private import ray_constants

    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):  # the knob moved: fail loudly, never listen widely
        import ray

        raise RuntimeError(f"Ray {ray.__version__}: ray_constants.ENABLE_RAY_CLUSTER is gone; "
                           "update mugv.data.ray_runner._serve_on_loopback_only")
    if embedded:
        os.environ[_LOOPBACK_ENV] = "0"
    else:
        os.environ.pop(_LOOPBACK_ENV, None)
    ray_constants.ENABLE_RAY_CLUSTER = not embedded


@contextmanager
def ray_session(cfg: RayConfig, workers: int | None = None) -> Iterator[None]:
    """Ray for the length of a stage: an already initialised Ray is reused (and left running); otherwise
    a cluster is joined or an embedded local Ray (no dashboard, quiet, every server on 127.0.0.1) is
    started and shut down after."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = cluster_address(cfg)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    _serve_on_loopback_only(embedded=not address)
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address="local", num_cpus=local_cpus(workers), include_dashboard=False, log_to_driver=False,
                 configure_logging=False,
                 _system_config={"task_oom_retries": cfg.max_retries})  # Ray's default retries OOM kills forever
    try:
        yield
    finally:
        ray.shutdown()


def _slots(cpus_per_task: float) -> int:
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0)
    return max(1, int(cpus // cpus_per_task))


def _in_process(fn: Callable[[T], R], tasks: Sequence[T], done: Callable[[], None]) -> Iterator[Outcome[R]]:
    for task in tasks:
        try:
            outcome = Outcome(result=fn(task))
        except Exception as e:  # noqa: BLE001 - any failure of one task is that task's outcome
            outcome = Outcome(error=describe(e))
        done()
        yield outcome


def _outcome(ref) -> Outcome:
    import ray
    from ray.exceptions import RayTaskError, WorkerCrashedError

    try:
        return Outcome(result=ray.get(ref))
    except RayTaskError as e:
        cause = e.cause if isinstance(e.cause, BaseException) else e
        return Outcome(error=describe(cause))
    except (WorkerCrashedError, ray.exceptions.OutOfMemoryError, ray.exceptions.LocalRayletDiedError,
            ray.exceptions.NodeDiedError):
        return Outcome(error=CRASHED)


def map_tasks(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    cfg: RayConfig,
    workers: int | None = None,
    on_done: Callable[[], None] | None = None,
    num_gpus: float = 0,
) -> list[Outcome[R]]:
    """Outcomes of `fn(task)` in task order (`cfg.per_task` tasks per Ray task): `iter_tasks` collected into a list."""
    return list(iter_tasks(fn, tasks, cfg, workers, on_done, num_gpus))


def _run_group(fn: Callable[[T], R], group: Sequence[T]) -> list[Outcome[R]]:
    """A Ray task's body: `fn` over a group of tasks, each exception that task's outcome (never the group's)."""
    return list(_in_process(fn, group, lambda: None))


def iter_tasks(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    cfg: RayConfig,
    workers: int | None = None,
    on_done: Callable[[], None] | None = None,
    num_gpus: float = 0,
) -> Iterator[Outcome[R]]:
    """Yield the outcomes of `fn(task)` in task order as they arrive, on Ray (1 CPU and `num_gpus` GPUs per Ray task).

    Tasks travel `cfg.per_task` to a Ray task. Each CPU slot of the cluster has one Ray task running
    and `QUEUED_PER_SLOT` waiting, so a worker that finishes starts the next without waiting for this
    process. A task's time limit (`cfg.task_timeout_s` per task it carries, retries included) counts
    from its submission, or, for one queued behind busy slots, from the latest limit of those ahead
    of it (by then a slot is free): one past it is cancelled (force: its worker is killed). A Ray
    task whose worker process dies is re-run up to `cfg.max_retries` times. A group that still dies
    or times out is split and its tasks run again one per Ray task, so only the culprit ends with the CRASHED error
    (or 'timed out after N s'); an exception escaping `fn` is that task's 'worker error: ...' and
    is never retried. Results that arrive ahead of an earlier task's wait for it, and nothing is
    submitted more than 4 slots' worth of tasks ahead of the next one to yield, so memory stays
    bounded; a caller that stops early (an error, or it needs no more) has the Ray tasks still in
    flight cancelled (Ray 2.55 may still let one already running finish). `fn` and the tasks
    must be picklable, and `fn` must be safe to run twice on a task; on a cluster, the paths they
    name must be on storage every node sees (a shared folder, s3://). `workers` is the CPUs of an
    embedded Ray (None: every core); `workers == 1` without a cluster runs everything here, in
    order (no crash isolation, no time limit). Ray is started (and stopped) around the iteration
    unless it is already initialised.
    """
    done = on_done or (lambda: None)
    if in_process(cfg, workers) or not tasks:
        yield from _in_process(fn, tasks, done)
        return
    import ray

    with ray_session(cfg, workers):
        remote = ray.remote(_run_group).options(num_cpus=1, num_gpus=num_gpus, max_retries=cfg.max_retries,
                                                retry_exceptions=False)
        fn_ref = ray.put(fn)
        slots = _slots(1.0)
        depth = (1 + QUEUED_PER_SLOT) * slots
        window = 4 * slots * cfg.per_task
        arrived: dict[int, Outcome[R]] = {}
        alone: deque[int] = deque()  # tasks of a group that died or timed out, to run one per Ray task
        in_flight: dict = {}  # ref -> (task indices, deadline)
        submitted = yielded = 0

        def submit(indices: list[int]) -> None:
            start = time.monotonic()  # a task queued behind busy slots starts by the time the last of them is over
            if len(in_flight) >= slots:
                start = max(deadline for _, deadline in in_flight.values())
            deadline = start + cfg.task_timeout_s * len(indices)
            in_flight[remote.remote(fn_ref, [tasks[i] for i in indices])] = (indices, deadline)

        def failed(indices: list[int], error: str) -> None:
            if len(indices) > 1:
                alone.extend(indices)
                return
            arrived[indices[0]] = Outcome(error=error)
            done()

        try:
            while yielded < len(tasks):
                while len(in_flight) < depth and (alone or (submitted < len(tasks) and submitted - yielded < window)):
                    if alone:
                        submit([alone.popleft()])
                    else:
                        group = list(range(submitted, min(len(tasks), submitted + cfg.per_task)))
                        submitted += len(group)
                        submit(group)
                if in_flight:
                    nearest = min(deadline for _, deadline in in_flight.values())
                    ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=max(0.0, nearest - time.monotonic()))
                    for ref in ready:
                        indices, _ = in_flight.pop(ref)
                        outcome = _outcome(ref)
                        if outcome.error is None:
                            for i, item in zip(indices, outcome.result):
                                arrived[i] = item
                                done()
                        elif outcome.error == CRASHED:
                            failed(indices, CRASHED)
                        else:  # the group runner itself failed (it catches `fn`'s exceptions): every task gets it
                            for i in indices:
                                arrived[i] = outcome
                                done()
                    now = time.monotonic()
                    for ref, (indices, deadline) in list(in_flight.items()):
                        if deadline <= now:
                            ray.cancel(ref, force=True)
                            del in_flight[ref]
                            failed(indices, timed_out(cfg.task_timeout_s))
                while yielded in arrived:
                    yield arrived.pop(yielded)
                    yielded += 1
        finally:
            for ref in in_flight:  # the caller stopped early (an error, or it needed no more)
                ray.cancel(ref, force=True)
