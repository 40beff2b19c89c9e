"""The crash-isolating process map: a task that kills its process fails alone."""

import os

from mugv.data.workers import CRASHED, map_isolated


def square_or_die(x: int) -> int:
    if x == 3:
        os._exit(7)  # a hard crash, like a segfault in a decoder
    if x == 5:
        raise ValueError("bad five")
    return x * x


def test_a_crashing_task_fails_alone_in_worker_processes():
    ticks = []
    outcomes = map_isolated(square_or_die, list(range(8)), workers=2, on_done=lambda: ticks.append(1))
    assert [o.result for o in outcomes] == [0, 1, 4, None, 16, None, 36, 49]
    assert outcomes[3].error == CRASHED
    assert outcomes[5].error == "worker error: ValueError: bad five"
    assert len(ticks) == 8


def test_in_process_map_turns_exceptions_into_outcomes():
    outcomes = map_isolated(square_or_die, [2, 5], workers=1)
    assert outcomes[0].result == 4 and outcomes[0].error is None
    assert outcomes[1].result is None and "bad five" in outcomes[1].error
