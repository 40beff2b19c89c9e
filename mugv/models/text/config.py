"""The typed config of a text encoder (kept free of torch: mugv.config imports it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mugv.section import Section


class TextEncoderConfig(Section):
    """Which text encoder: `minilm` (bundled all-MiniLM-L6-v2, 384-d) or `t5` (a local T5 encoder, e.g. t5-v1_1-xxl)."""

    name: Literal["minilm", "t5"] = "minilm"
    path: str | None = Field(None, description="local model folder; None = the bundled MiniLM (t5 needs a path)")
    max_length: int = Field(32, ge=2, description="tokens per caption (MUG-V's T5: 300; the synthetic captions need < 32)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _t5_needs_path(self) -> "TextEncoderConfig":
        if self.name == "t5" and not self.path:
            raise ValueError("text encoder t5 needs `path` (a local folder with the T5 encoder and tokenizer)")
        return self
