"""Teacher-feature cache: `peft-ckt cache-teacher` writes sharded safetensors + an index, and training from it
matches training with the live teacher."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from peft_ckt.commands import main as cli
from peft_ckt.teacher import TeacherFeatureExtractor
from peft_ckt.teacher_cache import INDEX_NAME, CachedTeacherFeatures, TeacherFeatureCache, cache_teacher_features
from peft_ckt.testing import tiny_wan_teacher
from peft_ckt.training import CKTTrainingArguments, SyntheticMovingBlobs, train

# Accelerate keeps process-wide singletons (conftest.py resets them around each test).
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

NUM_SAMPLES = 32


@pytest.fixture(scope="module")
def fp32_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache") / "fp32"
    # A tiny shard limit forces several shards (each sample is 16 tokens x 32 floats = 2 KiB; ~10 per shard).
    argv = ["cache-teacher", "--preset", "tiny", "--output-dir", str(folder), "--num-train-samples", str(NUM_SAMPLES)]
    assert cli([*argv, "--batch-size", "8", "--max-shard-size-mb", "0.02", "--no-progress-bar"]) == 0
    AcceleratorState._reset_state(reset_partial_state=True)
    return folder


def test_cache_layout_and_features_match_the_live_teacher(fp32_cache):
    index = json.loads((fp32_cache / INDEX_NAME).read_text())
    meta = index["metadata"]
    assert meta["teacher_layer"] == "blocks.2" and meta["dtype"] == "fp32" and meta["num_samples"] == NUM_SAMPLES
    assert meta["teacher_class"].endswith("WanTransformer3DModel") and meta["hidden_size"] == 32
    assert meta["num_tokens"] == 16  # 1 frame x (8/2) x (8/2) patches
    shards = sorted(p.name for p in fp32_cache.glob("features-*.safetensors"))
    assert len(shards) >= 3 and set(index["samples"].values()) == set(shards)
    assert not [p for p in fp32_cache.iterdir() if ".tmp" in p.name or p.name.startswith("index.rank")]

    cache = TeacherFeatureCache(str(fp32_cache))
    dataset = SyntheticMovingBlobs(num_samples=NUM_SAMPLES, text_length=6)
    extractor = TeacherFeatureExtractor(tiny_wan_teacher(), "blocks.2")
    for i in (0, 13, NUM_SAMPLES - 1):
        inputs = {k: v[None] for k, v in dataset[i]["teacher_inputs"].items()}
        live = extractor(inputs)[0]
        assert cache[i].dtype == torch.float32 and cache[i].shape == live.shape == (16, 32)
        # Batched (8) vs single-sample teacher forwards may round differently in the last bits.
        torch.testing.assert_close(cache[i], live, rtol=1e-5, atol=1e-6)

    wrapped = CachedTeacherFeatures(dataset, cache)
    sample = wrapped[5]
    assert "teacher_inputs" not in sample and torch.equal(sample["teacher_features"], cache[5])
    with pytest.raises(ValueError, match="holds 32 samples"):
        CachedTeacherFeatures(SyntheticMovingBlobs(num_samples=10), cache)
    with pytest.raises(FileExistsError, match="already exists"):
        cache_teacher_features(tiny_wan_teacher(), "blocks.2", dataset, str(fp32_cache))


def test_bf16_cache_is_half_the_size(tmp_path, fp32_cache):
    folder = tmp_path / "bf16"
    teacher, dataset = tiny_wan_teacher(), SyntheticMovingBlobs(num_samples=NUM_SAMPLES, text_length=6)
    cache = cache_teacher_features(teacher, "blocks.2", dataset, str(folder), dtype="bf16", progress=False)
    reference = TeacherFeatureCache(str(fp32_cache))
    assert cache[3].dtype == torch.bfloat16
    torch.testing.assert_close(cache[3].float(), reference[3], rtol=1e-2, atol=1e-2)
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    reference_size = sum(p.stat().st_size for p in fp32_cache.glob("*.safetensors"))
    assert size < 0.6 * reference_size


def test_training_from_the_cache_matches_the_live_teacher(tmp_path, fp32_cache):
    # Without router noise and dropout both runs draw the same random numbers (flow-matching noise and t only),
    # so any difference can only come from the teacher features: the cache's were computed by a separate teacher
    # forward in batches of 8, the live ones inside the training step. Measured on this CPU (fp32) the losses are
    # bitwise equal; the 1e-5 relative tolerance leaves room for BLAS backends whose GEMM rounding depends on the
    # batch layout (a last-bit change in the features, amplified by 6 optimizer steps, stays far below it).
    common = dict(
        preset="tiny",
        max_steps=6,
        per_device_batch_size=8,
        num_train_samples=NUM_SAMPLES,
        router_noise=False,
        adapter_dropout=0.0,
        attention_dropout=0.0,
        checkpointing_steps=0,
        report_to="none",
        progress_bar=False,
        learning_rate=1e-2,
        seed=3,
    )
    live = train(CKTTrainingArguments(output_dir=str(tmp_path / "live"), **common))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    cached = train(CKTTrainingArguments(output_dir=str(tmp_path / "cached"), teacher_cache=str(fp32_cache), **common))
    live_losses = [r["loss"] for r in live.history]
    cached_losses = [r["loss"] for r in cached.history]
    assert len(live_losses) == len(cached_losses) == 6
    torch.testing.assert_close(torch.tensor(cached_losses), torch.tensor(live_losses), rtol=1e-5, atol=0)
    # The adapter trained without a teacher in memory still names it, and has the same shapes.
    config = json.loads((tmp_path / "cached" / "adapter_config.json").read_text())
    assert config["teacher_class"].endswith("WanTransformer3DModel") and config["teacher_layer"] == "blocks.2"
    assert config["teacher_hidden_size"] == 32


def test_non_finite_cached_features_name_the_shard(fp32_cache, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "cache"
    shutil.copytree(fp32_cache, folder)
    index = json.loads((folder / INDEX_NAME).read_text())
    shard = folder / index["samples"]["13"]
    tensors = load_file(shard)
    tensors["13"][2, 5] = float("inf")
    save_file(tensors, shard, metadata={"format": "peft-ckt-teacher-features"})
    cache = TeacherFeatureCache(str(folder))
    assert torch.isfinite(cache[12]).all()  # other samples of the shard still read
    with pytest.raises(ValueError, match=rf"Sample 13 in the teacher-feature cache shard {shard} contains NaN or inf"):
        cache[13]
