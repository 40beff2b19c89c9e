"""Map a function over tasks in worker processes, so that one task killing its process fails only that task."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """A task's result, or why there is none (an exception escaped it, or its process died)."""

    result: R | None = None
    error: str | None = None


def _describe(exc: BaseException) -> str:
    return f"worker error: {type(exc).__name__}: {exc}"


CRASHED = "worker process died while processing it"


def _run_alone(fn: Callable[[T], R], task: T, context) -> Outcome[R]:
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        try:
            return Outcome(result=pool.submit(fn, task).result())
        except BrokenProcessPool:
            return Outcome(error=CRASHED)
        except Exception as e:  # noqa: BLE001 - any failure of one task is that task's outcome
            return Outcome(error=_describe(e))


def map_isolated(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    workers: int,
    on_done: Callable[[], None] | None = None,
) -> list[Outcome[R]]:
    """Outcomes of `fn(task)` in task order.

    `workers == 1` runs in this process (an exception still fails only its task). Otherwise
    `fn` runs in `workers` spawned processes, with at most `workers` tasks in flight; if a
    process dies (segfault, os._exit, OOM kill) the pool breaks, the tasks in flight are
    re-run one by one in fresh single-process pools (a task that dies again gets the
    CRASHED error), and the rest continue in a new pool. `fn` must be importable (picklable).
    """
    outcomes: list[Outcome[R] | None] = [None] * len(tasks)
    done_hook = on_done or (lambda: None)
    if workers == 1:
        for i, task in enumerate(tasks):
            try:
                outcomes[i] = Outcome(result=fn(task))
            except Exception as e:  # noqa: BLE001
                outcomes[i] = Outcome(error=_describe(e))
            done_hook()
        return outcomes  # type: ignore[return-value]

    context = multiprocessing.get_context("spawn")
    pending = deque(range(len(tasks)))
    while pending:
        suspects: list[int] = []
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            in_flight: dict[Future, int] = {}
            while (pending or in_flight) and not suspects:
                while pending and len(in_flight) < workers:
                    i = pending.popleft()
                    in_flight[pool.submit(fn, tasks[i])] = i
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = in_flight.pop(future)
                    try:
                        outcomes[i] = Outcome(result=future.result())
                    except BrokenProcessPool:
                        suspects.append(i)
                        continue
                    except Exception as e:  # noqa: BLE001
                        outcomes[i] = Outcome(error=_describe(e))
                    done_hook()
            for future, i in in_flight.items():  # the pool broke: keep what finished, suspect the rest
                if future.done() and future.exception() is None:
                    outcomes[i] = Outcome(result=future.result())
                    done_hook()
                else:
                    suspects.append(i)
        for i in sorted(suspects):
            outcomes[i] = _run_alone(fn, tasks[i], context)
            done_hook()
    return outcomes  # type: ignore[return-value]
