"""Post-training on a tiny release: SFT trains only curated clips; DPO and KTO learn from the preference set
(full fine-tune against a frozen copy, or LoRA against the adapters switched off), resume, and export a release."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mugv.diffusion.config import FlowTrainingConfig, SamplerConfig
from mugv.latents.shards import INDEX, LatentDataset
from mugv.preference.table import PreferenceParts, write_preference_set
from mugv.stages import preference_opt, sft
from mugv.stages.pretrain import Config as PretrainSection
from mugv.training.config import PreferenceOptConfig
from mugv.training.preference_trainer import ADAPTER, ADAPTER_WEIGHTS, MERGED, PreferenceTrainer
from tests.preference.tiny_release import make_release

BUCKET = "64p_48x64_f9"  # every preference sample has one shape


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("post"))


@pytest.fixture(scope="module")
def preference_dir(release):
    """Pairs and labels over the latent set's samples of one bucket: theme 0 wins, theme 2 loses."""
    latents = release.parent / "latents"
    dataset = LatentDataset(latents)
    rows = dataset.index[dataset.index["bucket"] == BUCKET]
    parts = PreferenceParts()
    reward = {"theme 0": 0.9, "theme 1": 0.6, "theme 2": 0.2}
    for row_number, row in rows.iterrows():
        sample = dataset[row_number]
        parts.add_sample({"prompt": row["caption"], "seed": int(row_number), "video": None,
                          "reward": reward[row["caption"]], "components": None, "source": "reward",
                          "model": str(release), "release_sha": None, "sampler": None, "label_file": None},
                         sample["latent"], sample["text"][None], sample["text_mask"], row["fps"])
    for i, win in enumerate(parts.samples):
        for lose in parts.samples[i + 1:]:
            if win["reward"] - lose["reward"] >= 0.3:
                parts.pairs.append({"winner": win["index"], "loser": lose["index"],
                                    "margin": win["reward"] - lose["reward"], "prompt": win["prompt"], "source": "reward"})
    parts.labels = [{"index": s["index"], "desirable": s["reward"] > 0.5, "source": "reward"} for s in parts.samples]
    out = release.parent / "preference"
    write_preference_set(out, parts)
    return out


def _tensors(model) -> dict[str, torch.Tensor]:
    """A model's weights, copied (Megatron's state dict also holds non-tensor extra state)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def _pretrain_section(**overrides) -> PretrainSection:
    base = dict(log_every=2, heldout={"samples": 2, "every": 2}, checkpoint={"every": 2, "keep": 2}, peak_flops=1e10,
                sample_prompts=["theme 0"], sample_size=[9, 48, 64])
    return PretrainSection.model_validate({**base, **overrides})


def _opt(method: str, **overrides) -> PreferenceOptConfig:
    base = dict(method=method, steps=4, batch=2, lr={"peak": 1e-3, "warmup_steps": 0}, beta=50.0)
    return PreferenceOptConfig.model_validate({**base, **overrides})


def _trainer(release, preference_dir, out: Path, opt: PreferenceOptConfig) -> PreferenceTrainer:
    cfg = _pretrain_section().trainer_config().model_copy(
        update={"stages": [preference_opt.curriculum_stage(opt)], "ema": opt.ema})
    return PreferenceTrainer(cfg, opt, preference_dir, release.parent / "latents", out, release, progress=False,
                             flow=FlowTrainingConfig())


def test_dpo_full_fine_tune_learns_against_a_frozen_reference_and_resumes(release, preference_dir, tmp_path,
                                                                          process_group):
    trainer = _trainer(release, preference_dir, tmp_path / "dpo", _opt("dpo"))
    reference_before = _tensors(trainer.reference)
    result = trainer.train()
    assert result["steps"] == 4 and 0.0 <= result["implicit_accuracy"] <= 1.0
    assert all(torch.equal(v, reference_before[k]) for k, v in _tensors(trainer.reference).items())
    trained = _tensors(trainer.model)
    assert any(not torch.equal(trained[k], reference_before[k]) for k in reference_before if "weight" in k)

    merged = trainer.export_weights()
    weights = load_file(str(merged / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())

    again = _trainer(release, preference_dir, tmp_path / "dpo", _opt("dpo"))  # the finished run resumes at its end
    again.load_or_init()
    assert again.step == 4 and again.sampler.steps == 4


def test_dpo_with_lora_trains_only_the_adapter_and_merges_it(release, preference_dir, tmp_path, process_group):
    opt = _opt("dpo", lora={"enabled": True, "rank": 4, "alpha": 4.0})
    trainer = _trainer(release, preference_dir, tmp_path / "lora", opt)
    assert trainer.reference is None  # the reference is the policy with its adapters off
    base = {k: v for k, v in _tensors(trainer.model).items() if ".lora_" not in k}
    trainer.train()
    after = _tensors(trainer.model)
    assert all(torch.equal(after[k], v) for k, v in base.items())  # frozen base weights, bit for bit
    merged = trainer.export_weights()
    adapter = load_file(str(tmp_path / "lora" / ADAPTER / ADAPTER_WEIGHTS))
    assert adapter and all(".lora_" in k for k in adapter)
    assert merged == tmp_path / "lora" / MERGED
    assert not any(".base." in k or ".lora_" in k for k in load_file(str(merged / "model.safetensors")))


def test_kto_trains_on_the_labels(release, preference_dir, tmp_path, process_group):
    result = _trainer(release, preference_dir, tmp_path / "kto", _opt("kto")).train()
    assert result["steps"] == 4 and "reference_point" in result
    assert result["loss_last"] == pytest.approx(result["loss_last"])  # finite


def test_sft_trains_only_curated_clips_and_releases(release, tmp_path, process_group):
    latents = release.parent / "latents"
    index = pd.read_parquet(latents / INDEX)
    clips = sorted(index["clip_id"].unique())
    good = set(clips[: len(clips) // 2])
    qc = pd.DataFrame({"clip_id": clips, "keep": True, "aesthetic": [8.0 if c in good else 3.0 for c in clips],
                       "sharpness": 500.0, "motion": 1.0})
    qc.to_parquet(tmp_path / "qc.parquet")
    cfg = sft.Config.model_validate({"steps": 4, "batching": {"buckets": ["*"], "tokens_per_batch": 300},
                                     "lr": {"peak": 1e-3, "warmup_steps": 0, "min_ratio": 0.0},
                                     "curation": {"aesthetic_min": 5.0, "min_clips": 1}})
    from mugv.models.text.config import TextEncoderConfig

    manifest = json.loads((release / "release.json").read_text())
    result = sft.run(latents, tmp_path / "qc.parquet", release, tmp_path / "sft", cfg, _pretrain_section(),
                     vae=release / "vae", flow=FlowTrainingConfig(), sampler=SamplerConfig(steps=2),
                     text=TextEncoderConfig.model_validate(manifest["text_encoder"]), register=False, progress=False,
                     metrics_path=tmp_path / "sft.json")
    curated = json.loads((tmp_path / "sft" / sft.CURATED).read_text())
    assert set(curated) == good and result["curated_clips"] == len(good)
    assert (tmp_path / "sft" / "release" / "release.json").is_file() and result["samples"] == 1
    assert json.loads((tmp_path / "sft.json").read_text())["steps"] == 4


def test_lora_and_ema_together_are_refused():
    with pytest.raises(ValueError, match="ema with lora"):
        _opt("dpo", lora={"enabled": True}, ema={"enabled": True})
