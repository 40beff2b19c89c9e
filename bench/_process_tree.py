"""Peak resident memory and CPU seconds of a process and every process beneath it, sampled while it runs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time


class TreeMonitor:
    """Samples a process and its descendants (an embedded Ray's GCS, raylet and workers, pool workers) every
    `interval` seconds until the `with` block ends: `peak_rss` is the largest sum of resident bytes, `cpu_s` the
    user + system seconds each process had used when last seen, summed (a process's last < `interval` s is missed).
    `getrusage(RUSAGE_CHILDREN)` cannot give the latter: Ray's workers are not waited for by the stage process."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.peak_rss = 0
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, start time) -> CPU seconds when last seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu.values())

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        import psutil

        try:
            top = psutil.Process(self.pid)
            procs = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = 0
        for p in procs:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    times = p.cpu_times()
                    self._cpu[(p.pid, p.create_time())] = times.user + times.system
            except psutil.NoSuchProcess:
                pass
        self.peak_rss = max(self.peak_rss, rss)


def run_monitored(cmd: list[str], what: str) -> tuple[float, TreeMonitor, str]:
    """Run `cmd` to the end under a TreeMonitor: (wall seconds, the monitor, stdout); exit naming `what` if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeMonitor(proc.pid) as tree:
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{what} failed:\n{stderr[-3000:]}")
    return wall, tree, stdout
