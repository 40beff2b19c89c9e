"""The plain-PyTorch MiniLM (load_text_encoder's default) against the transformers path on the same local weights."""

import pytest
import torch

from mugv.models.text.model import HFTextEncoder, TextEncoderConfig, load_text_encoder, minilm_path
from mugv.models.text.plain_bert import PlainBertTextEncoder

CAPTIONS = [
    "a red ball rolls across a green floor",
    "",
    "a cat",
    "   ",
    "Héllo, WORLD!! naïve café 中文 🎉 -- x2",
    "a yellow star moves quickly from left to right on a blue checkered background " * 3,  # > max_length
    "word " * 600,  # > 512 tokens: longer than BERT's positions before truncation
]


def transformers_encoder(max_length: int, dtype=torch.float32) -> HFTextEncoder:
    """The transformers path load_text_encoder used for MiniLM before plain_bert."""
    transformers = pytest.importorskip("transformers")
    path = minilm_path()
    model = transformers.AutoModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return HFTextEncoder(model, tokenizer, max_length, name="minilm", batch_size=4)


@pytest.mark.parametrize("max_length", [16, 77])
def test_same_features_masks_and_token_counts_as_transformers(max_length):
    ours = load_text_encoder(TextEncoderConfig(max_length=max_length, batch_size=4))
    assert isinstance(ours, PlainBertTextEncoder) and ours.dim == 384 and ours.name == "minilm"
    theirs = transformers_encoder(max_length)
    feats, mask = ours.encode(CAPTIONS)
    expect, expect_mask = theirs.encode(CAPTIONS)
    assert feats.shape == expect.shape == (len(CAPTIONS), max_length, 384) and feats.dtype == expect.dtype
    assert torch.equal(mask, expect_mask) and mask.dtype == expect_mask.dtype
    assert (feats - expect).abs().max() <= 1e-5
    for caption in CAPTIONS:  # each alone: padded to its own length only
        one, one_mask = ours.encode([caption])
        ref, ref_mask = theirs.encode([caption])
        assert torch.equal(one_mask, ref_mask) and (one - ref).abs().max() <= 1e-5
    assert [ours.token_count(c) for c in CAPTIONS] == [theirs.token_count(c) for c in CAPTIONS]
    assert ours.token_count("word " * 600) == 602
    empty_f, empty_m = ours.encode([])
    assert empty_f.shape == (0, max_length, 384) and empty_m.shape == (0, max_length)


def test_bfloat16_matches_transformers():
    ours = load_text_encoder(TextEncoderConfig(max_length=24, dtype="bfloat16"))
    theirs = transformers_encoder(24, torch.bfloat16)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    (feats, mask), (expect, expect_mask) = ours.encode(CAPTIONS[:4]), theirs.encode(CAPTIONS[:4])
    assert torch.equal(mask, expect_mask) and torch.equal(feats, expect)


def test_state_dict_keys_are_the_checkpoint_keys():
    from safetensors import safe_open

    ours = load_text_encoder(TextEncoderConfig())
    with safe_open(f"{minilm_path()}/model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert set(ours.model.state_dict()) == keys - {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}


def test_vocab_txt_tokenizer_gives_the_same_ids(tmp_path):
    import shutil

    from mugv.models.text.plain_bert import load_bert_tokenizer

    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(f"{minilm_path()}/{name}", tmp_path / name)
    from_json, from_vocab = load_bert_tokenizer(minilm_path()), load_bert_tokenizer(tmp_path)
    for caption in CAPTIONS:
        assert from_json.encode(caption).ids == from_vocab.encode(caption).ids
