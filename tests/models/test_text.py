"""Text encoders: real MiniLM token features and masks; the T5 loader on a tiny random T5 saved locally."""

import pytest
import torch
from pydantic import ValidationError

from mugv.models.text.model import TextEncoder, TextEncoderConfig, load_text_encoder, minilm_path


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder(TextEncoderConfig(max_length=32))


def test_minilm_token_features(minilm):
    assert isinstance(minilm, TextEncoder)
    feats, mask = minilm.encode(["a red ball rolls across a green floor", "", "a cat"])
    assert feats.shape == (3, 32, 384) and mask.shape == (3, 32) and minilm.dim == 384
    assert feats.dtype == torch.float32 and mask.dtype == torch.int64
    lengths = mask.sum(1).tolist()
    assert lengths[1] == 2  # "" is [CLS] [SEP]
    assert lengths[0] > lengths[2] > lengths[1]
    assert torch.all(feats[0, lengths[0] :] == 0) and feats[0, : lengths[0]].abs().sum() > 0
    assert not torch.allclose(feats[0, 1], feats[2, 1])  # different words, different features
    again, _ = minilm.encode(["a red ball rolls across a green floor"])
    assert torch.allclose(again[0], feats[0], atol=1e-5)


def test_batch_padding_does_not_change_features(minilm):
    captions = ["a yellow star moves quickly from left to right on a blue checkered background", "a cat"]
    feats, mask = minilm.encode(captions)
    ids, longest = minilm.tokenize(captions)
    pad = 32 - ids.shape[1]
    ids, full_mask = torch.nn.functional.pad(ids, (0, pad)), torch.nn.functional.pad(longest, (0, pad))
    with torch.no_grad():
        full = minilm.model(ids, full_mask)
    assert torch.equal(mask, full_mask)
    assert torch.allclose(feats, full * mask[..., None], atol=1e-4)


def test_minilm_truncates_to_max_length(minilm):
    feats, mask = minilm.encode(["word " * 200])
    assert feats.shape == (1, 32, 384) and int(mask.sum()) == 32


def test_t5_loader_on_tiny_random_t5(tmp_path):
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(tmp_path)  # any local tokenizer will do
    config = T5Config(vocab_size=30522, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    torch.manual_seed(0)
    T5EncoderModel(config).save_pretrained(tmp_path)
    enc = load_text_encoder(TextEncoderConfig(name="t5", path=str(tmp_path), max_length=300))
    feats, mask = enc.encode(["a dog runs on the beach", "sunset"])
    assert enc.dim == 16 and enc.max_length == 300 and enc.name == "t5"
    assert feats.shape == (2, 300, 16) and mask.shape == (2, 300)
    assert int(mask[0].sum()) > int(mask[1].sum()) > 0
    assert torch.isfinite(feats).all()


def test_t5_needs_a_path():
    with pytest.raises(ValidationError, match="needs `path`"):
        TextEncoderConfig(name="t5")
