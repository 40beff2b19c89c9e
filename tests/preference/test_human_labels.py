"""Human labels imported as preference data: pairwise CSV, absolute JSONL, a Label Studio export; bad rows rejected."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mugv.data.video_io import read_frames, write_video
from mugv.inference.generate import VideoGenerator
from mugv.preference.human_labels import LabelFileError, import_human_labels, read_label_file
from tests.preference.tiny_release import make_release

P1 = "a red circle moves quickly from left to right on a blue striped background"
P2 = "a yellow square stays still on a green noisy background"
P3 = "a white star moves slowly from top to bottom on a purple gradient background"
HELD_OUT = "a black circle moves quickly diagonally from top right to bottom left on an orange checkered background"
SIZE = dict(frames=9, height=32, width=32, fps=8.0)


def clip(path: Path, colour: tuple[int, int, int], frames: int = 9, height: int = 32, width: int = 32) -> None:
    """A small moving-square video of `colour` on grey."""
    video = np.full((frames, height, width, 3), 90, np.uint8)
    for t in range(frames):
        video[t, 8:16, 2 + t : 10 + t] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, list(video), 8.0)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A folder of clips and three label files naming them (relative paths), with good and malformed rows."""
    root = tmp_path_factory.mktemp("human")
    for name, colour in (("a", (250, 0, 0)), ("b", (0, 250, 0)), ("c", (0, 0, 250))):
        clip(root / "clips" / f"{name}.mp4", colour)
    clip(root / "clips" / "big.mp4", (250, 250, 0), height=48, width=64)  # cover-resized and cropped to 32x32
    clip(root / "clips" / "short.mp4", (0, 250, 250), frames=5)
    clip(root / "clips" / "small.mp4", (250, 0, 250), height=16, width=16)
    (root / "clips" / "broken.mp4").write_bytes(b"not a video at all")

    pairwise = root / "pairs.csv"
    with pairwise.open("w", newline="", encoding="utf-8-sig") as f:  # with a byte-order mark, as spreadsheets write
        writer = csv.writer(f)
        writer.writerow(["prompt", "video_a", "video_b", "choice"])
        writer.writerows([
            [P1, "clips/a.mp4", "clips/b.mp4", "a"],  # line 2: a over b
            [P1, "clips/a.mp4", "clips/c.mp4", "B"],  # line 3: c over a (a is the same sample as above)
            [P1, "clips/a.mp4", "clips/b.mp4", "tie"],
            [P1, "clips/a.mp4", "clips/b.mp4", "c"],
            [P1, "clips/a.mp4", "", "a"],
            [P1, "clips/a.mp4", "clips/nothere.mp4", "a"],
            ["  ", "clips/a.mp4", "clips/b.mp4", "a"],
            [P1, "clips/a.mp4", "clips/a.mp4", "b"],
            [P2, "clips/big.mp4", "clips/short.mp4", "a"],  # big encodes, short does not: no sample for either
            [P2, "clips/small.mp4", "clips/big.mp4", "b"],
            [P2, "clips/big.mp4", "clips/broken.mp4", "a"],
        ])

    absolute = root / "absolute.jsonl"
    absolute.write_text("\n".join([
        json.dumps({"prompt": P1, "video": "clips/a.mp4", "label": "good"}),  # the CSV's (a, P1) sample
        json.dumps({"prompt": P2, "video": "clips/b.mp4", "label": False}),
        json.dumps({"prompt": P2, "video": "clips/c.mp4", "label": "Bad"}),
        json.dumps({"prompt": P2, "video": "clips/c.mp4", "label": "meh"}),
        '{"prompt": "cut off',
        json.dumps({"video": "clips/a.mp4", "label": "good"}),
        json.dumps({"prompt": HELD_OUT, "video": "clips/a.mp4", "label": "good"}),
        json.dumps({"prompt": P3, "rating": 5}),
        json.dumps({"prompt": 5, "video": "clips/a.mp4", "label": "good"}),
        "",
    ]) + "\n")

    def choices(*values: str, cancelled: bool = False) -> dict:
        return {"id": 1, "was_cancelled": cancelled, "result": [
            {"id": "r1", "from_name": "choice", "to_name": "video", "type": "choices", "value": {"choices": [v]}}
            for v in values]}

    export = root / "label_studio.json"
    export.write_text(json.dumps([
        {"id": 11, "data": {"prompt": P3, "video_a": "clips/b.mp4", "video_b": "clips/c.mp4"},
         "annotations": [choices("B")]},  # item 1: c over b
        {"id": 12, "data": {"prompt": P3, "video": "clips/big.mp4"},
         "annotations": [choices("Good"), choices("bad", cancelled=True)]},  # item 2: desirable, once
        {"id": 13, "data": {"prompt": P3, "video": "clips/a.mp4"}, "annotations": [choices("good", cancelled=True)]},
        {"id": 14, "data": {"prompt": P3, "video": "clips/a.mp4"}, "annotations": []},
        {"id": 15, "data": {"prompt": P3, "video_a": "clips/a.mp4", "video_b": "clips/b.mp4"},
         "annotations": [choices("a", "b")]},
        {"id": 16, "annotations": [choices("a")]},
        {"id": 17, "data": {"prompt": P3, "video": "clips/a.mp4"},
         "annotations": [{"result": [{"type": "textarea", "value": {"text": ["nice"]}}]}]},
    ], indent=1))
    return root, [pairwise, absolute, export]


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    return VideoGenerator(make_release(tmp_path_factory.mktemp("release")))


EXPECTED_REJECTIONS = {
    ("pairs.csv", 4): "tie", ("pairs.csv", 5): "unknown choice", ("pairs.csv", 6): "missing field",
    ("pairs.csv", 7): "missing video", ("pairs.csv", 8): "empty prompt", ("pairs.csv", 9): "same video",
    ("pairs.csv", 10): "too short", ("pairs.csv", 11): "too small", ("pairs.csv", 12): "unreadable video",
    ("absolute.jsonl", 4): "unknown label", ("absolute.jsonl", 5): "not valid JSON",
    ("absolute.jsonl", 6): "missing field", ("absolute.jsonl", 7): "held-out prompt",
    ("absolute.jsonl", 8): "unknown row", ("absolute.jsonl", 9): "missing field",
    ("label_studio.json", 3): "no annotation", ("label_studio.json", 4): "no annotation",
    ("label_studio.json", 5): "ambiguous choice", ("label_studio.json", 6): "unknown row",
    ("label_studio.json", 7): "missing field",
}


def test_every_label_file_imports_its_good_rows_and_rejects_each_bad_one_with_its_reason(labelled, generator):
    root, files = labelled
    parts = import_human_labels(generator, [read_label_file(f) for f in files], lineage={"model": "m", "release_sha": "s"},
                                heldout={HELD_OUT}, progress=False, **SIZE)

    rejected = {(Path(r["file"]).name, r["row"]): r["reason"] for r in parts.rejected}
    assert len(parts.rejected) == len(rejected)  # one per row
    assert set(rejected) == set(EXPECTED_REJECTIONS)
    for key, kind in EXPECTED_REJECTIONS.items():
        assert rejected[key].startswith(kind), (key, rejected[key])
    assert "nothere.mp4" in rejected[("pairs.csv", 7)] and "short.mp4" in rejected[("pairs.csv", 10)]

    sample = {(Path(s["video"]).stem, s["prompt"]): s["index"] for s in parts.samples}
    assert set(sample) == {("a", P1), ("b", P1), ("c", P1), ("b", P2), ("c", P2), ("b", P3), ("c", P3), ("big", P3)}
    assert [s["index"] for s in parts.samples] == list(range(8))  # no orphan: big with P2 was never added
    pairs = {(p["winner"], p["loser"], p["prompt"]) for p in parts.pairs}
    assert pairs == {(sample["a", P1], sample["b", P1], P1), (sample["c", P1], sample["a", P1], P1),
                     (sample["c", P3], sample["b", P3], P3)}
    assert all(p["margin"] is None and p["source"] == "human" for p in parts.pairs)
    labels = {(label["index"], label["desirable"]) for label in parts.labels}
    assert labels == {(sample["a", P1], True), (sample["b", P2], False), (sample["c", P2], False),
                      (sample["big", P3], True)}
    for s in parts.samples:
        assert s["source"] == "human" and s["seed"] is None and s["reward"] is None and s["sampler"] is None
        assert s["model"] == "m" and s["release_sha"] == "s" and Path(s["label_file"]).name in {f.name for f in files}
        assert (Path(s["label_file"]).parent / s["video"]).is_file()  # relative to its label file

    a = parts.samples[sample["a", P1]]
    pixels = torch.from_numpy(read_frames(root / "clips" / "a.mp4")).float().permute(3, 0, 1, 2) / 127.5 - 1.0
    torch.testing.assert_close(parts.x0[a["index"]], generator.encode_pixels(pixels), atol=1e-4, rtol=1e-4)
    y, mask = generator.encode_prompt(P1)
    assert torch.equal(parts.y[a["index"]], y) and torch.equal(parts.mask[a["index"]], mask)
    assert parts.x0[sample["big", P3]].shape == parts.x0[0].shape == (24, 2, 4, 4) and parts.fps == [8.0] * 8


def test_a_file_that_is_no_label_file_is_named(tmp_path):
    not_a_list = tmp_path / "export.json"
    not_a_list.write_text(json.dumps({"data": {}}))
    with pytest.raises(LabelFileError, match="Label Studio"):
        read_label_file(not_a_list)
    truncated = tmp_path / "cut.json"
    truncated.write_text('[{"data": ')
    with pytest.raises(LabelFileError, match="not valid JSON"):
        read_label_file(truncated)
    with pytest.raises(LabelFileError, match=r"\.txt"):
        read_label_file(tmp_path / "labels.txt")


def test_pairwise_rows_read_without_the_release(labelled):
    _, files = labelled
    judgements, rejected = read_label_file(files[0])
    assert [(j.row, j.videos) for j in judgements[:2]] == [(2, ("clips/a.mp4", "clips/b.mp4")),
                                                            (3, ("clips/c.mp4", "clips/a.mp4"))]
    assert len(judgements) + len(rejected) == 11
