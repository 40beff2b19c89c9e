"""mugv.atomic: a staged folder replaces its destination whole, or not at all; killed runs' leftovers go."""

import pytest

from mugv.atomic import atomic_write_bytes, leftovers, publish_dir, sibling, staged_dir


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_staged_folder_replaces_the_old_one_whole_and_keeps_what_the_stage_does_not_write(tmp_path):
    final = tmp_path / "out"
    (final / "shards").mkdir(parents=True)
    (final / "shards" / "old.bin").write_bytes(b"old")
    (final / "index.parquet").write_bytes(b"old index")
    (final / ".gitignore").write_text("/shards\n")  # DVC's, not the stage's
    with staged_dir(final) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".out.staging-")
        (staging / "shards").mkdir()
        (staging / "shards" / "new.bin").write_bytes(b"new")
        (staging / "index.parquet").write_bytes(b"new index")
        assert _tree(final)["index.parquet"] == b"old index"  # nothing visible before the block ends
    assert _tree(final) == {".gitignore": b"/shards\n", "index.parquet": b"new index", "shards/new.bin": b"new"}
    assert leftovers(final) == []


def test_a_failure_inside_the_block_leaves_the_old_folder_and_no_staging(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_dir(final) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("killed midway")
    assert _tree(final) == {"a.txt": b"old"} and leftovers(final) == []


def test_publish_on_publishes_a_failed_gates_report_then_raises(tmp_path):
    class GateFailed(Exception):
        pass

    with pytest.raises(GateFailed), staged_dir(tmp_path / "qc", publish_on=(GateFailed,)) as staging:
        (staging / "report.md").write_text("FAILED")
        raise GateFailed
    assert (tmp_path / "qc" / "report.md").read_text() == "FAILED"


def test_leftovers_of_a_killed_run_are_removed_by_the_next_one_and_carry_false_drops_old_entries(tmp_path):
    final = tmp_path / "release"
    final.mkdir()
    (final / "stale.bin").write_bytes(b"x")
    stale_staging, stale_retired = sibling(final, "staging"), sibling(final, "retired")
    stale_staging.mkdir()
    stale_retired.mkdir()
    assert set(leftovers(final)) == {stale_staging, stale_retired}
    with staged_dir(final, carry=False) as staging:
        assert not stale_staging.exists() and not stale_retired.exists()
        (staging / "model.safetensors").write_bytes(b"weights")
    assert _tree(final) == {"model.safetensors": b"weights"}


def test_publish_dir_into_a_missing_destination_and_atomic_write(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp / "f").write_bytes(b"1")
    assert publish_dir(tmp, tmp_path / "new") == tmp_path / "new" and not tmp.exists()
    atomic_write_bytes(tmp_path / "new" / "g", b"2")
    assert _tree(tmp_path / "new") == {"f": b"1", "g": b"2"}
