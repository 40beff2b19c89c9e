"""The Ray task runner: outcomes in task order, a crashed worker retried then reported, a hung task cancelled."""

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from mugv.data.ray_runner import CRASHED, RayConfig, in_process, map_tasks


def square_or_fail(task: tuple[int, str]) -> int:
    x, marker = task
    if x == 3:
        os.kill(os.getpid(), signal.SIGSEGV)  # a decoder segfault, every time
    if x == 4 and not Path(marker).exists():
        Path(marker).touch()
        os._exit(7)  # dies once (an OOM kill, say): the retry succeeds
    if x == 5:
        raise ValueError("bad five")
    if x == 6:
        time.sleep(120)  # a hung decode
    return x * x


def own_pid(_: int) -> int:
    return os.getpid()


@pytest.fixture(scope="module", autouse=True)
def tasks_by_value():
    """pytest imports this file off the Ray workers' sys.path: its task functions travel by value."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_a_crashed_worker_is_retried_then_reported_and_exceptions_are_not_retried(local_ray, tmp_path):
    ticks = []
    tasks = [(x, str(tmp_path / "died-once")) for x in (0, 1, 2, 3, 4, 5, 7)]
    outcomes = map_tasks(square_or_fail, tasks, RayConfig(max_retries=1), workers=2, on_done=lambda: ticks.append(1))
    assert [o.result for o in outcomes] == [0, 1, 4, None, 16, None, 49]
    assert outcomes[3].error == CRASHED  # the segfault, run twice
    assert outcomes[5].error == "worker error: ValueError: bad five"  # never retried
    assert len(ticks) == 7


def test_grouped_tasks_keep_per_task_outcomes_and_a_dying_group_is_split(local_ray, tmp_path):
    """Three tasks per Ray task: the group holding the segfault dies (retried once), is split, and only the
    culprit ends CRASHED; the others in it run again alone and succeed (the one that dies once, on its retry)."""
    ticks = []
    tasks = [(x, str(tmp_path / "died-once")) for x in (0, 1, 2, 3, 4, 5, 7)]
    outcomes = map_tasks(square_or_fail, tasks, RayConfig(max_retries=1, per_task=3), workers=2,
                         on_done=lambda: ticks.append(1))
    assert [o.result for o in outcomes] == [0, 1, 4, None, 16, None, 49]
    assert outcomes[3].error == CRASHED and outcomes[5].error == "worker error: ValueError: bad five"
    assert len(ticks) == 7


def test_a_grouped_hung_task_times_out_alone(local_ray):
    map_tasks(own_pid, [1, 2], RayConfig(), workers=2)  # both workers up before the clock runs
    outcomes = map_tasks(square_or_fail, [(2, ""), (6, ""), (1, "")], RayConfig(task_timeout_s=3, per_task=3),
                         workers=2)
    assert [o.result for o in outcomes] == [4, None, 1] and outcomes[1].error == "timed out after 3 s"


def test_a_hung_task_is_cancelled_at_its_time_limit(local_ray):
    map_tasks(own_pid, [1, 2], RayConfig(), workers=2)  # both workers up before the clock runs
    outcomes = map_tasks(square_or_fail, [(6, ""), (2, "")], RayConfig(task_timeout_s=8), workers=2)
    assert outcomes[0].error == "timed out after 8 s" and outcomes[0].result is None
    assert outcomes[1].result == 4


def sleep_then_square(x: int) -> int:
    time.sleep(2)
    return x * x


def test_a_task_queued_behind_busy_workers_gets_its_whole_time_limit(local_ray):
    """Four 2 s tasks on 2 workers with a 3 s limit: the two queued behind the first pair end about 4 s after
    they were submitted, and are not cancelled for it (their limit counts from when a worker could take them)."""
    map_tasks(own_pid, [1, 2], RayConfig(), workers=2)  # both workers up before the clock runs
    started = time.monotonic()
    outcomes = map_tasks(sleep_then_square, [1, 2, 3, 4], RayConfig(task_timeout_s=3), workers=2)
    assert [o.result for o in outcomes] == [1, 4, 9, 16], [o.error for o in outcomes]
    assert time.monotonic() - started >= 3.5  # two rounds: the last pair did wait behind the first


def test_without_retries_a_worker_that_dies_once_is_reported(local_ray, tmp_path):
    outcomes = map_tasks(square_or_fail, [(4, str(tmp_path / "m")), (2, "")], RayConfig(max_retries=0), workers=2)
    assert outcomes[0].error == CRASHED and outcomes[1].result == 4


def ray_listeners() -> list[tuple[str, str]]:
    """(process name, listening address) of every TCP socket held by this process and its descendants (Ray's
    GCS, raylet, agents and workers are all started beneath the driver)."""
    import psutil

    mine = psutil.Process()
    pids = {mine.pid} | {p.pid for p in mine.children(recursive=True)}
    names = {}
    for pid in pids:
        try:
            names[pid] = psutil.Process(pid).name()
        except psutil.NoSuchProcess:
            pass
    return [(names.get(c.pid, "?"), c.laddr.ip) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in names]


def test_an_embedded_ray_listens_on_loopback_only(local_ray):
    map_tasks(own_pid, [1, 2], RayConfig(), workers=2)  # workers up, each with its own gRPC server
    listeners = ray_listeners()
    assert len(listeners) >= 4, listeners  # the GCS, the raylet and two workers at least
    assert [(name, ip) for name, ip in listeners if ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")] == []


def test_one_worker_without_a_cluster_runs_in_this_process(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert in_process(RayConfig(), workers=1) and not in_process(RayConfig(), workers=None)
    assert not in_process(RayConfig(address="127.0.0.1:6379"), workers=1)
    outcomes = map_tasks(own_pid, [1, 2], RayConfig(), workers=1)
    assert [o.result for o in outcomes] == [os.getpid()] * 2
    assert "bad five" in map_tasks(square_or_fail, [(5, "")], RayConfig(), workers=1)[0].error


def test_ingest_quarantines_a_video_past_its_time_limit(local_ray, tmp_path):
    from tests.support.ingest_media import write_three_shot

    from mugv.stages.ingest import Config, ingest

    (tmp_path / "src").mkdir()
    write_three_shot(tmp_path / "src" / "three.mp4")
    report = ingest(str(tmp_path / "src"), tmp_path / "out", Config(workers=2, ray=RayConfig(task_timeout_s=0.01)),
                    progress=False)
    import pandas as pd

    quarantine = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert list(quarantine.kind) == ["timed out"] and list(quarantine.reason) == ["timed out after 0.01 s"]
    assert report.quarantined_by_reason == {"timed out": 1} and report.clips_written == 0
    time.sleep(3)  # longer than the video takes: a task whose cancellation came too late has ended by now
    assert not list((tmp_path / "out" / "clips").iterdir())  # it wrote nothing where the stage had finished
    assert not (tmp_path / "out" / ".tasks").exists()
