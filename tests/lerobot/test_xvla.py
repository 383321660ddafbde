"""An X-VLA student (LeRobot's `xvla`, built from a local config and a local tokenizer: no Hub) with CKT injected
through its text embedding `model.vlm.language_model.model.shared`: alone, as the student of a `ckt` policy, and
through lerobot-train and lerobot-eval on LIBERO with a `ckt_wam` teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot_commands import TRAIN, dataset_args, lerobot_eval_on_libero, run_command

INJECTION = "model.vlm.language_model.model.shared"
IMAGE, WRIST, STATE = "observation.images.image", "observation.images.wrist_image", "observation.state"
FEATURES = {
    IMAGE: PolicyFeature(FeatureType.VISUAL, (3, 32, 32)),
    WRIST: PolicyFeature(FeatureType.VISUAL, (3, 32, 32)),
    STATE: PolicyFeature(FeatureType.STATE, (8,)),
}
# A tiny Florence-2 (DaViT vision tower + BART text model), built locally.
FLORENCE = {
    "vision_config": {"dim_embed": [16, 16, 16, 32], "num_heads": [2, 2, 2, 2], "num_groups": [2, 2, 2, 2],
                      "depths": [1, 1, 1, 1], "window_size": 2, "projection_dim": 32, "drop_path_rate": 0.0,
                      "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": 50},
                      "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": 100},
                      "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"]},
    "text_config": {"vocab_size": 100, "d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
                    "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
                    "decoder_ffn_dim": 64, "max_position_embeddings": 128},
    "projection_dim": 32,
    "vocab_size": 100,
}  # fmt: skip
BANK = dict(num_context_tokens=2, num_experts=3, top_k=2, bottleneck_dim=8, router_hidden_dim=8,
            num_attention_heads=2, adapter_dropout=0.0, load_balance_weight=0.5)  # fmt: skip


def tiny_xvla(action_dim: int = 20, **overrides):
    from lerobot.policies.xvla.configuration_xvla import XVLAConfig
    from lerobot.policies.xvla.modeling_xvla import XVLAPolicy

    torch.manual_seed(0)
    config = XVLAConfig(
        florence_config=FLORENCE, hidden_size=32, depth=1, num_heads=2, len_soft_prompts=4, chunk_size=4,
        n_action_steps=4, num_denoising_steps=2, max_len_seq=128, device="cpu", input_features=dict(FEATURES),
        output_features={"action": PolicyFeature(FeatureType.ACTION, (action_dim,))}, **overrides,
    )  # fmt: skip
    policy = XVLAPolicy(config)
    # Florence-2 allocates its image projection with `torch.empty` and leaves it to the pretrained weights: from a
    # config alone it holds whatever was in memory (seen: 4e26, then a NaN loss). Give it real values.
    torch.nn.init.trunc_normal_(policy.model.vlm.image_projection, std=0.02)
    return policy


def save_word_tokenizer(folder: Path, texts: list[str]) -> Path:
    """A BART-style tokenizer (`<s> words </s>`, `<pad>`, `<unk>`, lower case) over the words of `texts`, saved for
    `AutoTokenizer.from_pretrained`: X-VLA's processor loads its `tokenizer_name` that way, and a local folder needs
    no Hub. Its ids stay below the tiny Florence-2's vocabulary size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({word for text in texts for word in text.lower().split()})
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{word: i + 4 for i, word in enumerate(words)}}
    assert len(vocab) <= FLORENCE["vocab_size"], "more words than the tiny Florence-2 has embeddings"
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(folder)
    return folder


def batch(size: int = 2) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        IMAGE: torch.rand(size, 3, 32, 32, generator=generator),
        WRIST: torch.rand(size, 3, 32, 32, generator=generator),
        STATE: torch.randn(size, 8, generator=generator),
        "observation.language.tokens": torch.randint(3, 100, (size, 6), generator=generator),
        "action": torch.randn(size, 4, 20, generator=generator),
        "task": ["put the soup in the basket"] * size,
    }


def test_ckt_on_an_xvla_student_through_its_text_embedding():
    from peft import get_peft_model

    from peft_ckt import CKTConfig
    from peft_ckt.testing import TinyWorldActionModel

    teacher = TinyWorldActionModel(obs_dim=5, text_dim=4, width=12, num_blocks=2).eval()
    teacher_inputs = {"observation": torch.randn(2, 3, 5), "text_embeds": torch.randn(2, 2, 4)}
    model = get_peft_model(
        tiny_xvla(), CKTConfig(teacher=teacher, teacher_layer="blocks.0", target_modules=INJECTION, **BANK)
    )
    assert model.base_model.get_bank().student_hidden_size == 32  # the text embedding's width
    loss, _ = model(batch(), teacher_inputs=teacher_inputs)
    assert model.auxiliary_loss().item() > 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None for p in model.base_model.get_bank().parameters())
    with torch.no_grad():
        torch.manual_seed(1)
        with model.injection_scope(teacher_inputs=teacher_inputs):
            with_ckt = model.predict_action_chunk(batch())
        torch.manual_seed(1)
        with model.disable_adapter():
            alone = model.predict_action_chunk(batch())
    assert with_ckt.shape == (2, 4, 20) and not torch.allclose(with_ckt, alone)
    with pytest.raises(RuntimeError, match="without the teacher's context"):
        model.predict_action_chunk(batch())


def test_ckt_policy_with_an_xvla_student_and_a_wam_teacher(tmp_path):
    from peft_ckt.integrations.lerobot import CKTConfig, CKTWamConfig
    from peft_ckt.integrations.lerobot.modeling_ckt import CKTPolicy
    from peft_ckt.integrations.lerobot.modeling_ckt_wam import CKTWamPolicy

    tiny_xvla().save_pretrained(tmp_path / "student")
    from peft_ckt.wam.tokenizer import build_vocabulary

    words = build_vocabulary(["put the soup in the basket"])
    wam = CKTWamConfig(backbone="wan", vocabulary=words, device="cpu",
                       input_features=dict(FEATURES), output_features={"action": PolicyFeature(FeatureType.ACTION, (7,))})  # fmt: skip
    CKTWamPolicy(wam).save_pretrained(tmp_path / "teacher")
    config = CKTConfig(student_path=str(tmp_path / "student"), teacher_path=str(tmp_path / "teacher"),
                       target_modules=[INJECTION], device="cpu", **BANK)  # fmt: skip
    policy = CKTPolicy(config)
    loss, info = policy.forward(batch())
    assert torch.isfinite(loss) and info["ckt_load_balance_loss"] > 0
    policy.save_pretrained(tmp_path / "ckt")
    reloaded = CKTPolicy.from_pretrained(tmp_path / "ckt")
    torch.manual_seed(2)
    actions = reloaded.select_action(batch())
    assert actions.shape == (2, 20)


@pytest.fixture(scope="module")
def xvla_ckt(demos, wam_teacher, lerobot_root) -> dict[str, Path]:
    """An X-VLA student for the collected dataset (7-D actions through its `auto` action space, images resized to
    the 32x32 it trained on, a local tokenizer) and a `ckt` adapter trained by lerobot-train from the WAM teacher."""
    import pandas as pd

    root = lerobot_root / "xvla"
    root.mkdir()
    tasks = list(pd.read_parquet(demos / "meta" / "tasks.parquet").index)
    tokenizer = save_word_tokenizer(root / "tokenizer", tasks)
    student = root / "student"
    tiny_xvla(action_dim=7, action_mode="auto", tokenizer_name=str(tokenizer), tokenizer_max_length=16,
              resize_imgs_with_padding=(32, 32)).save_pretrained(student)  # fmt: skip
    log = run_command([*TRAIN, *dataset_args(demos), "--policy.type=ckt", f"--policy.student_path={student}",
                       f"--policy.teacher_path={wam_teacher}", "--policy.teacher_layer=backbone.blocks.1",
                       f"--policy.target_modules=[\"{INJECTION}\"]", "--steps=3", "--save_freq=3",
                       f"--output_dir={root / 'ckt'}"], lerobot_root)  # fmt: skip
    return {"log": log, "root": root, "tokenizer": tokenizer, "student": student,
            "ckt": root / "ckt" / "checkpoints" / "last" / "pretrained_model"}  # fmt: skip


def test_lerobot_train_trains_a_ckt_adapter_on_an_xvla_student(xvla_ckt):
    from safetensors.torch import load_file

    assert "step:3" in xvla_ckt["log"]
    folder = xvla_ckt["ckt"]
    config = json.loads((folder / "config.json").read_text())
    assert config["type"] == "ckt" and config["student_path"] == str(xvla_ckt["student"])
    assert config["target_modules"] == [INJECTION]
    weights = load_file(folder / "adapter_model.safetensors")
    assert weights and all(key.startswith("base_model.model.ckt") for key in weights)
    # The saved pre-processor is the student's, tokenizing with the local tokenizer (lerobot-eval reloads it).
    steps = json.loads((folder / "policy_preprocessor.json").read_text())["steps"]
    tokenizer_step = next(step for step in steps if step["registry_name"] == "tokenizer_processor")
    assert tokenizer_step["config"]["tokenizer_name"] == str(xvla_ckt["tokenizer"])


def test_lerobot_eval_runs_the_xvla_ckt_policy_on_libero_with_the_teachers_context(xvla_ckt):
    log, probe = lerobot_eval_on_libero(xvla_ckt["ckt"], xvla_ckt["root"] / "eval", xvla_ckt["root"])
    assert "'n_episodes': 1" in log and "End of eval" in log
    # 12 steps, 4 actions per chunk: three chunks, the teacher once per chunk, each chunk changed by the context.
    assert probe == {"chunks": 3, "teacher_calls": 3, "changed": 3}
