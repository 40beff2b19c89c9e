"""A release as an MLflow pyfunc model logged from code (no pickle): `mlflow.pyfunc.load_model(...).predict` renders videos.

This file is the model's code: `log_release_model` passes its path to MLflow, which copies it into the model
and executes it on load; executed that way (not imported as `mugv.registry.pyfunc_model`) it calls
`mlflow.models.set_model`. The release folder travels as the model's artifact `release`
(`mugv.tracking.resolve_model_ref` returns that folder for such a version).

predict input, one row per video (a pandas DataFrame, or a list of dicts):
    prompt (str), image (optional: a base64-encoded PNG or JPEG, the first frame: image-to-video; resized to
    cover the frame size and centre-cropped), frames (1 or 8k+1), height, width (multiples of 16), seed,
    steps (Euler steps), cfg (guidance scale). Missing values take ROW_DEFAULTS.
params: output_dir (where the mp4 files go; "" = a new temporary folder), fps.
output, one row per input row: video (the mp4's path), frames, height, width (the uint8 video's shape), seed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from mugv.tracking import PYFUNC_RELEASE_ARTIFACT as RELEASE_ARTIFACT

if TYPE_CHECKING:
    from mugv.tracking import StageRun, TrackingConfig

MODEL_NAME_IN_RUN = "release-model"  # the logged model's name inside its run
ROW_DEFAULTS = {"image": None, "frames": 17, "height": 64, "width": 64, "seed": 0, "steps": 25, "cfg": 4.0}
PARAM_DEFAULTS = {"output_dir": "", "fps": 8.0}
INPUT_EXAMPLE = [{"prompt": "a red circle moves quickly from left to right on a blue striped background",
                  "frames": 17, "height": 64, "width": 64, "seed": 0}]  # stored with the model, never run


def release_signature():
    """The model's signature: the columns and params of the module docstring."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "prompt"), ColSpec("string", "image", required=False),
                     *(ColSpec("long", name, required=False) for name in ("frames", "height", "width", "seed", "steps")),
                     ColSpec("double", "cfg", required=False)])
    outputs = Schema([ColSpec("string", "video"), *(ColSpec("long", n) for n in ("frames", "height", "width", "seed"))])
    params = ParamSchema([ParamSpec("output_dir", "string", PARAM_DEFAULTS["output_dir"]),
                          ParamSpec("fps", "double", PARAM_DEFAULTS["fps"])])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def decode_image(encoded: str, height: int, width: int):
    """A base64 PNG/JPEG as RGB uint8 [height, width, 3]: resized to cover, centre-cropped."""
    import base64

    import cv2
    import numpy as np

    bgr = cv2.imdecode(np.frombuffer(base64.b64decode(encoded), dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("image is not a base64-encoded PNG or JPEG")
    h, w = bgr.shape[:2]
    scale = max(height / h, width / w)
    resized = cv2.resize(bgr, (max(width, round(w * scale)), max(height, round(h * scale))), interpolation=cv2.INTER_AREA)
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return cv2.cvtColor(resized[top:top + height, left:left + width], cv2.COLOR_BGR2RGB)


def _rows(model_input) -> list[dict[str, Any]]:
    """The input as a list of row dicts, missing or null values filled with ROW_DEFAULTS."""
    import math

    records = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
    rows = []
    for i, record in enumerate(records):
        if not isinstance(record.get("prompt"), str):
            raise ValueError(f"row {i}: a `prompt` string is required")
        present = {k: v for k, v in record.items()
                   if v is not None and not (isinstance(v, float) and math.isnan(v))}
        rows.append({**ROW_DEFAULTS, **present})
    return rows


class ReleaseVideoModel(PythonModel):
    """Loads the release once (`VideoGenerator`) and renders one mp4 per input row."""

    def load_context(self, context) -> None:
        from mugv.inference.generate import VideoGenerator

        self.generator = VideoGenerator(Path(context.artifacts[RELEASE_ARTIFACT]))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import tempfile

        params = {**PARAM_DEFAULTS, **(params or {})}
        out_dir = Path(params["output_dir"] or tempfile.mkdtemp(prefix="mugv-pyfunc-"))
        results = []
        for i, row in enumerate(_rows(model_input)):
            frames, height, width, seed = (int(row[k]) for k in ("frames", "height", "width", "seed"))
            image = decode_image(row["image"], height, width) if row["image"] else None
            path = self.generator.render(row["prompt"], out_dir / f"video_{i:03d}_s{seed}.mp4", image=image,
                                         frames=frames, height=height, width=width, steps=int(row["steps"]),
                                         cfg=float(row["cfg"]), seed=seed, fps=float(params["fps"]))
            results.append({"video": str(path), "frames": frames, "height": height, "width": width, "seed": seed})
        return pd.DataFrame(results, columns=["video", "frames", "height", "width", "seed"])


def log_release_model(run: StageRun, release: str | os.PathLike, name: str, alias: str | None = "candidate",
                      tags: dict[str, Any] | None = None, cfg: TrackingConfig | None = None,
                      description: str | None = None) -> str:
    """Log `release` as this file's pyfunc model in `run` and register it as a version of `name` (tags,
    description; `alias` moved to it). Returns the version. The counterpart of `tracking.register_checkpoint`
    for release folders."""
    import mugv
    from mugv import tracking

    tracking.ensure_experiment(cfg)  # sets the tracking URI
    client = mlflow.MlflowClient()
    info = mlflow.pyfunc.log_model(
        name=MODEL_NAME_IN_RUN, python_model=Path(__file__), artifacts={RELEASE_ARTIFACT: str(release)},
        signature=release_signature(), input_example=INPUT_EXAMPLE, pip_requirements=[f"mugv=={mugv.__version__}"],
    )
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, description="MUGDiT releases (safetensors) from mugv, as pyfunc models")
    all_tags = {"mugv.run_id": run.run_id, **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
    version = client.create_model_version(name, source=info.model_uri, run_id=run.run_id, tags=all_tags,
                                          description=description, model_id=info.model_id).version
    if alias:
        client.set_registered_model_alias(name, alias, str(version))
    return str(version)


if __name__ != "mugv.registry.pyfunc_model":  # executed by MLflow as the model's code
    mlflow.models.set_model(ReleaseVideoModel())
