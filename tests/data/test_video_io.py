"""video_io.write_video: the same frames always encode to the same bytes."""

import hashlib

import numpy as np

from mugv.data.video_io import probe, read_frames, write_video


def test_write_video_is_byte_reproducible(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (4, 6, 3)).astype(np.uint8).repeat(40, 0).repeat(40, 1)
    frames = [np.roll(base, 3 * i, axis=1) for i in range(30)]
    digests = set()
    for k in range(5):
        path = tmp_path / f"v{k}.mp4"
        assert write_video(path, frames, 12) == 30
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    info = probe(tmp_path / "v0.mp4")
    assert (info.width, info.height, info.num_frames, info.fps) == (240, 160, 30, 12.0)
    assert read_frames(tmp_path / "v0.mp4").shape == (30, 160, 240, 3)
