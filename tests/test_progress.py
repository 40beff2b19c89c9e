"""Progress lines with bars off: item counts, fields, ETA, printed every few seconds and at the end."""

import io

from mugv.progress import LineProgress, format_duration, stage_progress


def test_lines_every_interval_and_at_completion(monkeypatch):
    clock = iter(range(0, 1000, 4))  # each clock read is 4 s later
    monkeypatch.setattr("mugv.progress.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    with LineProgress(every_s=10, label="qc", stream=out) as bar:
        task = bar.add_task("scoring clips", total=10, loss=float("nan"))
        for _ in range(10):
            bar.update(task, advance=1, loss=0.25)
    lines = out.getvalue().splitlines()
    assert 2 <= len(lines) <= 4  # about one per 10 s of the ~40 s, plus the last item
    assert lines[0].startswith("qc scoring clips: ") and "loss 0.2500" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("qc scoring clips: 10/10 (100%)") and "ETA" not in lines[-1]


def test_a_task_without_total_and_a_nan_field():
    out = io.StringIO()
    with LineProgress(every_s=0, stream=out) as bar:
        task = bar.add_task("hash", loss=float("nan"))
        bar.advance(task)
    assert out.getvalue().splitlines()[0] == "hash: 1 elapsed 0:00"


def test_bars_on_is_rich_and_off_is_lines():
    from rich.progress import Progress

    assert isinstance(stage_progress(enabled=True), Progress)
    assert isinstance(stage_progress(enabled=False), LineProgress)
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "1:05"


def test_a_slow_item_still_gets_lines_and_a_heartbeat_repeats(capsys):
    import time

    from mugv.progress import heartbeat

    out = io.StringIO()
    with LineProgress(every_s=0.05, stream=out) as bar:
        bar.add_task("step", total=2)
        time.sleep(0.3)  # one slow item: the ticker prints while it runs
    assert len(out.getvalue().splitlines()) >= 2 and out.getvalue().startswith("step: 0/2 (0%) elapsed")
    with heartbeat("train-vae: evaluating", every_s=0.05):
        time.sleep(0.3)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "train-vae: evaluating" and len(lines) >= 3 and "(elapsed 0:00)" in lines[1]
    with heartbeat("quiet", enabled=False):
        pass
    assert capsys.readouterr().err == ""
