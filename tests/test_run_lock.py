"""One pipeline run per checkout (flows/run_lock.py) and the DVC remote a run syncs with (flows/dvc_remote.py)."""

import subprocess
import sys
import threading

import pytest

from flows.dvc_remote import choose_remote, sync_command
from flows.run_lock import LOCK_FILE, CheckoutBusy, checkout_lock


def test_second_run_is_refused_with_the_holder_named(tmp_path):
    with checkout_lock(tmp_path, holder={"flow_run_id": "0a1b", "flow_run_name": "nimble-fox"}):
        with pytest.raises(CheckoutBusy) as refused:
            with checkout_lock(tmp_path):
                pytest.fail("two runs held one checkout")
    message = str(refused.value)
    assert "\n" not in message
    assert "flow run 'nimble-fox' (0a1b)" in message and str(tmp_path / LOCK_FILE) in message
    with checkout_lock(tmp_path):  # released when the holder's block ends
        pass


def test_a_waiting_run_gets_the_checkout_when_the_holder_finishes(tmp_path):
    held, release = threading.Event(), threading.Event()

    def holder():
        with checkout_lock(tmp_path):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    threading.Timer(1.0, release.set).start()
    with checkout_lock(tmp_path, wait_s=20):  # would raise CheckoutBusy if it did not wait
        assert release.is_set()
    thread.join(10)


def test_waiting_is_bounded(tmp_path):
    with checkout_lock(tmp_path):
        with pytest.raises(CheckoutBusy, match="after waiting 0.6 s"):
            with checkout_lock(tmp_path, wait_s=0.6):
                pass


def test_a_killed_holder_leaves_the_checkout_free(tmp_path):
    script = (
        "import sys, time; from flows.run_lock import checkout_lock\n"
        f"with checkout_lock({str(tmp_path)!r}):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(CheckoutBusy, match=f"pid {proc.pid} on"):
            with checkout_lock(tmp_path):
                pass
    finally:
        proc.kill()
        proc.wait()
    with checkout_lock(tmp_path, wait_s=5):  # the kernel released the dead holder's lock
        pass


REMOTES = {"store": "s3://bucket/dvc", "backup": "s3://other/dvc"}


@pytest.mark.parametrize(
    ("default", "wanted", "enabled", "chosen"),
    [
        (None, None, True, None),  # no remote anywhere: no pull, no push
        ("store", None, True, "store"),  # DVC's default remote
        ("store", "backup", True, "backup"),  # params pipeline.remote wins
        ("store", "backup", False, None),  # sync_remote: false
    ],
)
def test_the_remote_a_run_syncs_with(default, wanted, enabled, chosen):
    assert choose_remote(REMOTES, default, wanted, enabled) == chosen


def test_an_unknown_remote_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match="remote 'nope'.*configured remotes: backup, store"):
        choose_remote(REMOTES, None, "nope", True)
    with pytest.raises(ValueError, match="none \\(dvc remote add -d"):
        choose_remote({}, "gone", None, True)


def test_pull_tolerates_an_empty_remote_push_does_not_hide_errors():
    pull = sync_command("pull", "store", ["synth", "ingest"])
    push = sync_command("push", "store", ["synth", "ingest"])
    assert pull[2:] == ["dvc", "pull", "--remote", "store", "--allow-missing", "synth", "ingest"]
    assert push[2:] == ["dvc", "push", "--remote", "store", "synth", "ingest"]
    with pytest.raises(ValueError):
        sync_command("fetch", "store", [])
