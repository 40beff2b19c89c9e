"""What every DiT training stage does after training: export the release, render its samples, register it in MLflow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mugv.diffusion.config import FlowTrainingConfig, SamplerConfig
    from mugv.models.text.config import TextEncoderConfig
    from mugv.tracking import TrackingConfig

RELEASE = "release"
SAMPLES = "samples"


@dataclass
class Published:
    """The release folder, its sample videos and the registered model version (None: not registered)."""

    release: Path
    samples: list[Path]
    version: int | None


def render_samples(release: Path, prompts: list[str], sampler: SamplerConfig, out_dir: Path,
                   size: tuple[int, int, int] = (17, 64, 64)) -> list[Path]:
    """One short video of (frames, height, width) `size` per fixed prompt, from a release folder."""
    from mugv.inference.generate import VideoGenerator

    frames, height, width = size
    generator = VideoGenerator(release)
    return [
        generator.render(prompt, out_dir / f"prompt_{i:02d}.mp4", steps=sampler.steps, cfg=sampler.cfg_scale, seed=i,
                         frames=frames, height=height, width=width)
        for i, prompt in enumerate(prompts)
    ]


def publish(tracked: Any, tracker: TrackingConfig | None, *, weights: Path, out_dir: Path, vae: Path,
            latents_dir: Path, text: TextEncoderConfig, flow: FlowTrainingConfig, sampler: SamplerConfig,
            prompts: list[str], size: tuple[int, int, int], register: bool, alias: str | None,
            tags: dict[str, Any], description: str) -> Published:
    """Export `weights` (a checkpoint or a converted DiT folder) as `out_dir/release`, render `out_dir/samples`,
    log both, and with `register` and a tracker register the release as a pyfunc model (moving `alias`, when
    given); non-finite weights are never registered."""
    from mugv import tracking
    from mugv.atomic import staged_dir
    from mugv.inference.release import check_release_finite, export_release

    release = out_dir / RELEASE
    with staged_dir(release, carry=False) as staging:  # each folder published whole: a kill leaves none or all of it
        export_release(weights, vae, latents_dir, text, staging,
                       time_shift={"resolution": flow.resolution_shift, "base_pixels": flow.shift_base_pixels})
    with staged_dir(out_dir / SAMPLES, carry=False) as staging:
        samples = [out_dir / SAMPLES / p.name for p in render_samples(release, prompts, sampler, staging, size)]
    tracked.log_artifact(out_dir / SAMPLES, SAMPLES)
    version = None
    if register and tracker is not None:
        from mugv.registry.pyfunc_model import log_release_model

        check_release_finite(release)
        version = int(log_release_model(
            tracked, release, tracker.registered_model, alias=alias, cfg=tracker,
            tags={**tags, "mugv.git_commit": tracking.git_commit(),
                  "mugv.release_sha": tracking.folder_fingerprint(release)},
            description=description,
        ))
    return Published(release, samples, version)
