"""Captions: sidecar parsing, best-overlap choice, the backends."""

from pathlib import Path

import pytest

from mugv.data.captions import (
    CaptionRequest,
    ManifestCaptioner,
    NoCaptioner,
    SidecarCaptioner,
    TimedCaption,
    best_overlap,
    make_captioner,
    parse_sidecar,
)


def _request(source, start, end, manifest_caption=None):
    return CaptionRequest(str(source), Path("clip.mp4"), start, end, manifest_caption=manifest_caption)


def test_parse_sidecar_timed_and_plain():
    text = "[0.00-2.50] a red circle moves left\n\n[2.50-4.00]   a blue square\n"
    assert parse_sidecar(text) == [
        TimedCaption(0.0, 2.5, "a red circle moves left"),
        TimedCaption(2.5, 4.0, "a blue square"),
    ]
    assert parse_sidecar("a whole video\nover two lines\n") == "a whole video over two lines"


def test_best_overlap_picks_the_longest_overlap_and_the_earliest_on_ties():
    lines = [TimedCaption(0, 2, "first"), TimedCaption(2, 4, "second"), TimedCaption(4, 6, "third")]
    assert best_overlap(lines, 1.5, 3.9) == "second"
    assert best_overlap(lines, 1.0, 3.0) == "first"
    assert best_overlap(lines, 7.0, 8.0) == ""


def test_sidecar_captioner(tmp_path):
    timed = tmp_path / "timed.mp4"
    (tmp_path / "timed.txt").write_text("[0.00-2.00] shot one\n[2.00-5.00] shot two\n")
    plain = tmp_path / "plain.mp4"
    (tmp_path / "plain.txt").write_text("the same words for every clip\n")
    captioner = SidecarCaptioner()
    assert captioner.caption(_request(timed, 0.0, 1.9)) == "shot one"
    assert captioner.caption(_request(timed, 1.8, 4.0)) == "shot two"
    assert captioner.caption(_request(plain, 3.0, 4.0)) == "the same words for every clip"
    assert captioner.caption(_request(tmp_path / "none.mp4", 0.0, 1.0)) == ""


def test_manifest_and_none_captioners_and_factory():
    assert ManifestCaptioner().caption(_request("a.mp4", 0, 1, "from the manifest")) == "from the manifest"
    assert ManifestCaptioner().caption(_request("a.mp4", 0, 1)) == ""
    assert NoCaptioner().caption(_request("a.mp4", 0, 1, "ignored")) == ""
    assert isinstance(make_captioner("sidecar"), SidecarCaptioner)
    with pytest.raises(ValueError, match="unknown captioner"):
        make_captioner("vlm")
