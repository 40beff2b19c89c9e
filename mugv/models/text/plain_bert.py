"""A plain-PyTorch BERT encoder (MiniLM) with the `tokenizers` library: transformers' numerics, none of its import cost.

Mirrors transformers' `BertModel` (sdpa attention, post-LN, exact GELU) op for op, so its last hidden
state matches `AutoModel.from_pretrained(path)` on the same weights; the pooler is not built.
`tests/models/test_plain_bert.py` checks parity with the transformers path.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class BertEmbeddings(nn.Module):
    """Word + token-type (all 0) + absolute position embeddings, then LayerNorm."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"], padding_idx=cfg.get("pad_token_id", 0))
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], cfg["hidden_size"])
        self.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], cfg["hidden_size"])
        self.LayerNorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[N, L] ids -> [N, L, D]."""
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)[None]
        token_types = torch.zeros_like(positions).expand(input_ids.shape[0], length)
        h = self.word_embeddings(input_ids) + self.token_type_embeddings(token_types)
        h = h + self.position_embeddings(positions)
        return self.LayerNorm(h)


class BertSelfAttention(nn.Module):
    """Query/key/value projections and scaled dot-product attention over all valid tokens."""

    def __init__(self, cfg: dict):
        super().__init__()
        dim = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.head_dim = dim // self.heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """[N, L, D] and a bool mask [N, 1, L, L] (None: all valid) -> [N, L, D]."""
        shape = (*h.shape[:-1], -1, self.head_dim)
        q, k, v = (proj(h).view(shape).transpose(1, 2) for proj in (self.query, self.key, self.value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5)
        return out.transpose(1, 2).contiguous().reshape(*h.shape[:-1], -1).contiguous()


class BertResidualOut(nn.Module):
    """Dense projection, residual add, LayerNorm (BERT's post-LN)."""

    def __init__(self, dim_in: int, dim: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(dim_in, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """LayerNorm(dense(h) + residual)."""
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nn.Module):
    """Self-attention followed by its residual output block."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertResidualOut(cfg["hidden_size"], cfg["hidden_size"], cfg["layer_norm_eps"])

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """[N, L, D] -> [N, L, D]."""
        return self.output(self.self(h, mask), h)


class BertIntermediate(nn.Module):
    """The MLP's up projection with exact (erf) GELU."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.dense = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """[N, L, D] -> [N, L, D_ff]."""
        return F.gelu(self.dense(h))


class BertLayer(nn.Module):
    """One encoder layer: attention, then MLP, each with residual + LayerNorm after it."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertResidualOut(cfg["intermediate_size"], cfg["hidden_size"], cfg["layer_norm_eps"])

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """[N, L, D] -> [N, L, D]."""
        h = self.attention(h, mask)
        return self.output(self.intermediate(h), h)


class BertEncoder(nn.Module):
    """The stack of encoder layers (`encoder.layer.{i}` in the checkpoint)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg["num_hidden_layers"]))


class PlainBertModel(nn.Module):
    """BERT without the pooler: input ids + attention mask -> last hidden state."""

    def __init__(self, cfg: dict):
        super().__init__()
        if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("PlainBertModel supports hidden_act 'gelu' with absolute position embeddings only")
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[N, L] ids and 0/1 mask -> [N, L, D] (padded positions hold values, as in transformers)."""
        h = self.embeddings(input_ids)
        mask = None  # as transformers: no mask when every token is valid
        if not bool(attention_mask.all()):
            length = input_ids.shape[1]
            mask = attention_mask.bool()[:, None, None, :].expand(-1, 1, length, -1)
        for layer in self.encoder.layer:
            h = layer(h, mask)
        return h


def load_plain_bert(path: str | Path, dtype: torch.dtype = torch.float32) -> PlainBertModel:
    """The BERT in folder `path` (config.json + model.safetensors or pytorch_model.bin), in eval mode."""
    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    if (path / "model.safetensors").exists():
        from safetensors.torch import load_file

        state = load_file(path / "model.safetensors")
    else:
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    model = PlainBertModel(cfg)  # not on the meta device: that imports torch._dynamo (~1.7 s)
    wanted = model.state_dict().keys()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise KeyError(f"{path}: the checkpoint lacks {missing[:5]}")
    model.load_state_dict({k: state[k] for k in wanted}, strict=True)
    return model.to(dtype).eval()


def load_bert_tokenizer(path: str | Path):
    """A `tokenizers.Tokenizer` for folder `path` (tokenizer.json, else vocab.txt), without truncation or padding."""
    from tokenizers import Tokenizer

    path = Path(path)
    if (path / "tokenizer.json").exists():
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    else:
        from tokenizers.implementations import BertWordPieceTokenizer

        config = path / "tokenizer_config.json"
        lower = json.loads(config.read_text()).get("do_lower_case", True) if config.exists() else True
        tokenizer = BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=lower)._tokenizer
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class PlainBertTextEncoder:
    """`HFTextEncoder`'s behaviour for a BERT: last hidden state per token, zero-padded to max_length.

    Each batch runs padded only to its longest caption and is then zero-padded to max_length.
    """

    def __init__(self, model: PlainBertModel, tokenizer, max_length: int, name: str, batch_size: int = 32):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.name = name
        self.batch_size = batch_size
        self.dim = model.hidden_size
        self.pad_id = tokenizer.token_to_id("[PAD]") or 0

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def token_count(self, caption: str) -> int:
        """Tokens of `caption` before truncation to max_length, special tokens included."""
        return len(self.tokenizer.encode(caption, add_special_tokens=True).ids)

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and attention mask [N, longest], truncated to max_length (ending in [SEP]), right-padded."""
        self.tokenizer.enable_truncation(self.max_length)
        try:
            encodings = self.tokenizer.encode_batch(list(captions), add_special_tokens=True)
        finally:
            self.tokenizer.no_truncation()
        longest = max(len(e.ids) for e in encodings)
        ids = torch.full((len(encodings), longest), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(encodings), longest), dtype=torch.int64)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.int64)
            mask[row, : len(e.ids)] = 1
        return ids, mask

    @torch.inference_mode()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        feats, masks = [], []
        device = next(self.model.parameters()).device
        for i in range(0, len(captions), self.batch_size):
            ids, mask = self.tokenize(captions[i : i + self.batch_size])
            out = self.model(ids.to(device), mask.to(device))
            pad = self.max_length - mask.shape[1]
            feats.append(F.pad(out.float().cpu() * mask[..., None], (0, 0, 0, pad)))
            masks.append(F.pad(mask, (0, pad)))
        if not feats:
            return torch.zeros(0, self.max_length, self.dim), torch.zeros(0, self.max_length, dtype=torch.int64)
        return torch.cat(feats), torch.cat(masks)
