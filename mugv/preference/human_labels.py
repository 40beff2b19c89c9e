"""Human labels imported as preference data: pairwise and absolute CSV/JSONL rows, Label Studio JSON exports.

Label files (videos are paths relative to the label file):
    pairwise       .csv or .jsonl rows `prompt, video_a, video_b, choice`: choice `a` or `b` names the better
                   video; `tie` is skipped with a reason
    absolute       .csv or .jsonl rows `prompt, video, label`: label `good` / `bad` (or `true` / `false`)
    Label Studio   .json export: a list of tasks whose `data` holds `prompt` and `video_a` + `video_b` (pairwise) or
                   `video` (absolute); each annotation that is not cancelled is one judgement, the single value
                   of its `choices` result(s): a | b | tie, or good | bad | true | false
A row is pairwise when it has any of video_a, video_b, choice, else absolute. Choices and labels are read
case-insensitively. Each labelled video's first `frames` frames are cover-resized and centre-cropped to the
preference size (never upscaled), encoded by the release's VAE and standardised by its latent stats; its prompt
is encoded by the release's text encoder. A row that cannot be used goes to rejected.jsonl with its file,
row (CSV/JSONL line, Label Studio task item) and reason; the import goes on.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mugv.preference.table import PreferenceParts, jsonl_rows

if TYPE_CHECKING:
    import torch

    from mugv.inference.generate import VideoGenerator

LABEL_SUFFIXES = (".csv", ".jsonl", ".json")  # .json: a Label Studio export
PAIR_FIELDS = ("video_a", "video_b", "choice")
CHOICES = {"a": "a", "b": "b", "tie": "tie"}
LABEL_VALUES = {"good": True, "true": True, "bad": False, "false": False}


class LabelFileError(ValueError):
    """A file that is not a label file at all (unknown suffix, a .json export that is not a list of tasks)."""


@dataclass(frozen=True)
class Judgement:
    """One usable human judgement: videos (as written, relative to the label file), and which is better or
    whether the one video is desirable."""

    file: Path
    row: int
    prompt: str
    videos: tuple[str, ...]  # (better, worse) for a pair, (video,) for a label
    desirable: bool | None = None  # None for a pair


def rejection(file: Path, row: int, reason: str) -> dict:
    """A rejected.jsonl row; `reason` starts with its kind ("missing field: ...", "tie: ...")."""
    return {"file": str(file), "row": row, "reason": reason}


def _text(fields: dict, name: str) -> str | None:
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value.strip() if isinstance(value, str) else str(value)


def parse_row(fields: dict[str, Any], file: Path, row: int) -> Judgement | dict:
    """A Judgement from one row's fields, or a rejected row saying what is wrong with it."""
    pairwise = any(name in fields for name in PAIR_FIELDS)
    if not pairwise and not {"video", "label"} & set(fields):
        return rejection(file, row, "unknown row: neither pairwise (prompt, video_a, video_b, choice) nor absolute "
                                    "(prompt, video, label)")
    if "prompt" not in fields or fields["prompt"] is None:
        return rejection(file, row, "missing field: prompt")
    prompt = fields["prompt"]
    if not isinstance(prompt, str):
        return rejection(file, row, f"missing field: prompt is {type(prompt).__name__}, not text")
    if not prompt.strip():
        return rejection(file, row, "empty prompt")
    needed = ("video_a", "video_b", "choice") if pairwise else ("video", "label")
    missing = [name for name in needed if _text(fields, name) is None]
    if missing:
        return rejection(file, row, f"missing field: {', '.join(missing)}")
    if pairwise:
        a, b, choice = (_text(fields, name) for name in needed)
        chosen = CHOICES.get(choice.lower())
        if chosen is None:
            return rejection(file, row, f"unknown choice: {choice!r} (a | b | tie)")
        if chosen == "tie":
            return rejection(file, row, "tie: no preference between video_a and video_b")
        if a == b:
            return rejection(file, row, f"same video: video_a and video_b are both {a}")
        return Judgement(file, row, prompt.strip(), (a, b) if chosen == "a" else (b, a))
    label = fields["label"]
    desirable = label if isinstance(label, bool) else LABEL_VALUES.get(str(label).strip().lower())
    if desirable is None:
        return rejection(file, row, f"unknown label: {label!r} (good | bad | true | false)")
    return Judgement(file, row, prompt.strip(), (_text(fields, "video"),), desirable)


def _csv_rows(path: Path) -> list[tuple[int, dict | str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(f)
        rows = []
        for fields in reader:
            rows.append((reader.line_num, {k: v for k, v in fields.items() if k is not None}))  # a short row: None
        return rows


def _annotation_choice(annotation: dict) -> str | None | list:
    """The one value of an annotation's `choices` results; None when there is none, the list when several."""
    values = []
    for result in annotation.get("result") or []:
        if isinstance(result, dict) and result.get("type") == "choices":
            values += list((result.get("value") or {}).get("choices") or [])
    distinct = sorted({str(v) for v in values})
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else distinct


def _label_studio_rows(path: Path) -> list[tuple[int, dict | str]]:
    """(task item number, the fields of one judgement or a rejection reason), one per usable annotation."""
    tasks = json.loads(path.read_text())
    if not isinstance(tasks, list):
        raise LabelFileError(f"label file {path} is not a Label Studio JSON export (a list of tasks)")
    rows: list[tuple[int, dict | str]] = []
    for item, task in enumerate(tasks, 1):
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            rows.append((item, "unknown row: a task without `data`"))
            continue
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        kept = [a for a in annotations if not a.get("was_cancelled")]
        if not kept:
            rows.append((item, "no annotation: every annotation was cancelled" if annotations
                         else "no annotation: the task has none"))
            continue
        pairwise = "video_a" in data or "video_b" in data
        for annotation in kept:
            choice = _annotation_choice(annotation)
            if choice is None:
                rows.append((item, "missing field: the annotation has no choices result"))
            elif isinstance(choice, list):
                rows.append((item, f"ambiguous choice: {choice}"))
            else:
                rows.append((item, {**data, ("choice" if pairwise else "label"): choice}))
    return rows


def read_label_file(path: Path) -> tuple[list[Judgement], list[dict]]:
    """A label file's usable judgements and rejected rows (see the module docstring for the schemas).

    LabelFileError for a file that is not a label file at all (an unknown suffix, a .json that is not a list)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LABEL_SUFFIXES:
        raise LabelFileError(f"label file {path}: {suffix or 'a name without suffix'} is none of "
                             f"{', '.join(LABEL_SUFFIXES)}")
    if suffix == ".json":
        try:
            rows = _label_studio_rows(path)
        except json.JSONDecodeError as e:
            raise LabelFileError(f"label file {path} is not valid JSON: {e.msg} (line {e.lineno})") from None
    else:
        rows = _csv_rows(path) if suffix == ".csv" else jsonl_rows(path)
    judgements, rejected = [], []
    for number, fields in rows:
        parsed = rejection(path, number, fields) if isinstance(fields, str) else parse_row(fields, path, number)
        (judgements if isinstance(parsed, Judgement) else rejected).append(parsed)
    return judgements, rejected


@dataclass(frozen=True)
class EncodedVideo:
    """A labelled video as the DiT sees it: standardised latent [C, T, h, w] and the video's fps."""

    x0: torch.Tensor
    fps: float


def encode_video(generator: VideoGenerator, path: Path, frames: int, height: int, width: int,
                 default_fps: float) -> EncodedVideo | str:
    """The first `frames` frames of a video, cover-resized and centre-cropped as the encode stage does, through the
    release's VAE; a rejection reason when the video is missing, unreadable, too short or too small."""
    from mugv.data.buckets import Bucket, crop_for
    from mugv.data.encode import PlannedSample, load_pixels
    from mugv.data.video_io import probe

    if not path.is_file():
        return f"missing video: {path.name} does not exist"
    try:
        info = probe(path, count_frames=False)
    except Exception as e:  # noqa: BLE001  (any decoder error: the row is rejected, the import goes on)
        return f"unreadable video: {path.name}: {e}"
    if crop_for(info.height, info.width, height, width) is None:
        return f"too small: {path.name} is {info.width}x{info.height}, the set is {width}x{height} (never upscaled)"
    bucket = Bucket(resolution="preference", height=height, width=width, frames=frames)
    planned = PlannedSample(sample_id=path.name, clip_id=path.name, kind=bucket.kind, bucket=bucket, path=str(path),
                            caption="", fps=info.fps, frame_start=0, frame_end=frames, src_height=info.height,
                            src_width=info.width)
    try:
        pixels = load_pixels(planned)
    except Exception as e:  # noqa: BLE001
        kind = "too short" if "decoded" in str(e) else "unreadable video"
        return f"{kind}: {path.name}: {e}"
    return EncodedVideo(generator.encode_pixels(pixels), info.fps if info.fps > 0 else default_fps)


def import_human_labels(generator: VideoGenerator, read: list[tuple[list[Judgement], list[dict]]], *, frames: int,
                        height: int, width: int, fps: float, lineage: dict, heldout: set[str],
                        progress: bool) -> PreferenceParts:
    """Every judgement of the label files (`read_label_file` of each) as samples with pairs (pairwise) or labels
    (absolute); each video (with its prompt) becomes one sample however many rows name it. Rows naming a held-out
    evaluation prompt are rejected. `fps` is used for a video whose file gives none."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from mugv.progress import stage_progress

    parts = PreferenceParts()
    for _, rejected in read:
        parts.rejected += rejected
    videos: dict[Path, EncodedVideo | str] = {}
    texts: dict[str, tuple] = {}
    index_of: dict[tuple[Path, str], int] = {}
    columns = (TextColumn("preference_data"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with stage_progress(*columns, enabled=progress, label="preference_data") as bar:
        task = bar.add_task("human labels", total=sum(len(judgements) for judgements, _ in read))
        for judgements, _ in read:
            for j in judgements:
                bar.advance(task)
                if j.prompt in heldout:
                    parts.rejected.append(rejection(j.file, j.row, f"held-out prompt: {j.prompt!r} is an "
                                                                   "evaluation prompt"))
                    continue
                paths = [(j.file.parent / v).resolve() for v in j.videos]
                for path in paths:
                    if path not in videos:
                        videos[path] = encode_video(generator, path, frames, height, width, fps)
                failed = [videos[p] for p in paths if isinstance(videos[p], str)]
                if failed:
                    parts.rejected.append(rejection(j.file, j.row, failed[0]))
                    continue
                if j.prompt not in texts:
                    texts[j.prompt] = generator.encode_prompt(j.prompt)
                y, mask = texts[j.prompt]
                indices = []
                for path, written in zip(paths, j.videos):
                    if (path, j.prompt) not in index_of:
                        row = {"prompt": j.prompt, "seed": None, "video": written, "reward": None,
                               "components": None, "source": "human", **lineage, "sampler": None,
                               "label_file": str(j.file)}
                        encoded = videos[path]
                        index_of[(path, j.prompt)] = parts.add_sample(row, encoded.x0, y, mask, encoded.fps)
                    indices.append(index_of[(path, j.prompt)])
                if j.desirable is None:
                    parts.pairs.append({"winner": indices[0], "loser": indices[1], "margin": None,
                                        "prompt": j.prompt, "source": "human"})
                else:
                    parts.labels.append({"index": indices[0], "desirable": j.desirable, "source": "human"})
    return parts
