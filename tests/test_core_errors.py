"""Bad configuration or inputs fail early, with an error that names the problem."""

import importlib
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

import peft_ckt
from peft_ckt import CKTConfig
from peft_ckt.testing import (
    TINY_CKT_KWARGS,
    TinyWorldActionModel,
    tiny_cosmos_inputs,
    tiny_cosmos_student,
    tiny_wan_inputs,
    tiny_wan_teacher,
)

torch.set_num_threads(1)

SMALL = TINY_CKT_KWARGS


def test_unknown_teacher_layer_suggests_close_names(teacher):
    with pytest.raises(ValueError, match=r"teacher_layer='block\.1'.*Did you mean.*blocks\.1"):
        get_peft_model(tiny_cosmos_student(), CKTConfig(teacher=teacher, **{**SMALL, "teacher_layer": "block.1"}))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(top_k=4, num_experts=3), r"`top_k` \(4\) cannot be larger than `num_experts` \(3\)"),
        (dict(injection="middle"), r"`injection` must be one of"),
        (dict(num_context_tokens=0), r"`num_context_tokens` must be a positive integer"),
        (dict(adapter_dropout=1.5), r"`adapter_dropout` must be in \[0, 1\)"),
        (dict(context_kwarg=None), r"set `context_kwarg`.*or `target_modules`"),
        (dict(teacher_layer=""), r"`teacher_layer` must be"),
        (dict(student_hidden_size=25), r"divisible by `num_attention_heads`"),
        (dict(teacher=3), r"`teacher` must be an nn.Module or a Hub id"),
        (dict(teacher_output_index="0"), r"`teacher_output_index` must be an integer"),
        (dict(teacher_output_index=True), r"`teacher_output_index` must be an integer"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises((ValueError, TypeError), match=message):
        CKTConfig(**{**SMALL, **overrides})


def test_explicit_width_mismatch(teacher):
    with pytest.raises(ValueError, match=r"teacher_hidden_size=64 does not match the teacher's width 32"):
        get_peft_model(tiny_cosmos_student(), CKTConfig(teacher=teacher, teacher_hidden_size=64, **SMALL))
    with pytest.raises(ValueError, match=r"student_hidden_size=32 does not match the student's width 24"):
        get_peft_model(tiny_cosmos_student(), CKTConfig(teacher=teacher, student_hidden_size=32, **SMALL))


def test_unresolvable_injection_point_leaves_student_untouched(teacher):
    student = tiny_cosmos_student()
    names = {name for name, _ in student.named_modules()}
    with pytest.raises(ValueError, match=r"has no argument `context_kwarg='prompt_embeds'`"):
        get_peft_model(student, CKTConfig(teacher=teacher, context_kwarg="prompt_embeds", **SMALL))
    with pytest.raises(ValueError, match=r"`target_modules='text_encoder'` does not name a module of the student"):
        get_peft_model(student, CKTConfig(teacher=teacher, target_modules="text_encoder", **SMALL))
    assert {name for name, _ in student.named_modules()} == names  # nothing half-attached
    assert all(p.requires_grad for p in student.parameters())


def test_missing_teacher_inputs_and_context(teacher):
    model = get_peft_model(tiny_cosmos_student(), CKTConfig(teacher=teacher, **SMALL))
    with pytest.raises(ValueError, match=r"pass `teacher_inputs=\{...\}`.*or a precomputed `ckt_context="):
        model(**tiny_cosmos_inputs())


def test_no_teacher_attached():
    # e.g. trained from cached teacher features: widths given, no teacher in memory
    model = get_peft_model(tiny_cosmos_student(), CKTConfig(teacher_hidden_size=32, **SMALL))
    with pytest.raises(ValueError, match=r"No teacher is attached to CKT adapter 'default'"):
        model(**tiny_cosmos_inputs(), teacher_inputs=tiny_wan_inputs())
    # the cached-features path works without one, and a teacher can be attached later
    out = model(**tiny_cosmos_inputs(), ckt_context=model.encode_features(torch.randn(2, 16, 32)))
    assert torch.isfinite(out.sample).all()
    model.attach_teacher(tiny_wan_teacher())
    assert torch.isfinite(model(**tiny_cosmos_inputs(), teacher_inputs=tiny_wan_inputs()).sample).all()
    with pytest.raises(ValueError, match=r"Cannot infer the teacher's width"):
        get_peft_model(tiny_cosmos_student(), CKTConfig(**SMALL))


def test_batch_mismatch(teacher):
    model = get_peft_model(tiny_cosmos_student(), CKTConfig(teacher=teacher, **SMALL))
    with pytest.raises(ValueError, match=r"Batch size mismatch: the CKT context .* has 3 samples but the student"):
        model(**tiny_cosmos_inputs(2), teacher_inputs=tiny_wan_inputs(3))


def test_non_finite_teacher_features(teacher):
    model = get_peft_model(tiny_cosmos_student(), CKTConfig(teacher=teacher, **SMALL))
    bad = tiny_wan_inputs()
    bad["hidden_states"][0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"features at `blocks.1` contain NaN or inf"):
        model(**tiny_cosmos_inputs(), teacher_inputs=bad)


def test_teacher_layer_not_on_the_path():
    class Teacher(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.used(x)

    class Student(nn.Module):
        def forward(self, x, context):
            return x + context.mean(1, keepdim=True)

    model = get_peft_model(
        Student(),
        CKTConfig(
            teacher=Teacher(), **{**SMALL, "teacher_layer": "unused"}, context_kwarg="context", student_hidden_size=4
        ),
    )
    with pytest.raises(RuntimeError, match=r"without running `teacher_layer='unused'`"):
        model(x=torch.zeros(1, 1, 4), context=torch.zeros(1, 2, 4), teacher_inputs={"x": torch.zeros(1, 3, 4)})


def test_registration_is_idempotent_and_reload_safe():
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import PeftType

    peft_ckt.register_ckt()
    reloaded = importlib.reload(peft_ckt)
    assert PeftType.CKT.value == "CKT" and "CKT" in [t.value for t in PeftType]
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.CKT] is reloaded.CKTConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.CKT] is reloaded.CKTModel


# ---------------------------------------------------------------------------------------------- loading
@pytest.fixture()
def saved_adapter(teacher, tmp_path):
    model = get_peft_model(tiny_cosmos_student(), CKTConfig(teacher=teacher, **SMALL))
    folder = tmp_path / "adapters" / "ckt"
    model.save_pretrained(folder)
    return folder


def test_local_folder_without_weights_is_never_looked_up_on_the_hub(saved_adapter, teacher, monkeypatch):
    (saved_adapter / "adapter_model.safetensors").unlink()
    # A relative path is also a valid Hub id ("adapters/ckt"): peft would ask the Hub for it.
    monkeypatch.chdir(saved_adapter.parent.parent)
    for path in ("adapters/ckt", str(saved_adapter)):
        with pytest.raises(
            FileNotFoundError, match=rf"{path} has no adapter_model.safetensors .*not looked up on the Hub"
        ):
            PeftModel.from_pretrained(tiny_cosmos_student(), path, teacher=teacher)
        model = get_peft_model(tiny_cosmos_student(), CKTConfig(teacher=teacher, **SMALL))
        with pytest.raises(FileNotFoundError, match=r"has no adapter_model.safetensors"):
            model.load_adapter(path, adapter_name="other")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_weights_name_the_file(saved_adapter, teacher, damage):
    weights = saved_adapter / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not safetensors" * 8)
    with pytest.raises(ValueError, match=rf"Cannot read the CKT adapter weights {weights}: .*truncated or corrupt"):
        PeftModel.from_pretrained(tiny_cosmos_student(), str(saved_adapter), teacher=teacher)


def test_peft_type_mismatch_is_named(saved_adapter, teacher, tmp_path):
    config_path = saved_adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "peft_type": "LORA"}))
    with pytest.raises(ValueError, match=r"holds a CKT adapter's settings but says peft_type='LORA', not 'CKT'"):
        PeftModel.from_pretrained(tiny_cosmos_student(), str(saved_adapter), teacher=teacher)
    # A CKT load path given another method's adapter
    lora = get_peft_model(tiny_cosmos_student(), LoraConfig(target_modules=["to_q"], r=2))
    lora.save_pretrained(tmp_path / "lora")
    with pytest.raises(ValueError, match=r"holds a LORA adapter \(LoraConfig\), not a CKT adapter"):
        CKTConfig.from_pretrained(str(tmp_path / "lora"))


def test_adapter_on_a_student_of_another_width(tmp_path):
    config = CKTConfig(
        teacher=TinyWorldActionModel(), **{**SMALL, "teacher_layer": "obs_in"}, target_modules="text_proj"
    )
    get_peft_model(TinyWorldActionModel(width=16), config).save_pretrained(tmp_path)
    with pytest.raises(
        ValueError,
        match=rf"The CKT adapter {tmp_path} was trained for a student of width 16 \(student_hidden_size\), and this "
        r"student has width 24",
    ):
        PeftModel.from_pretrained(TinyWorldActionModel(width=24), str(tmp_path), teacher=TinyWorldActionModel())


# ---------------------------------------------------------------------------------------------- bad tensors
def test_tuple_output_needs_teacher_output_index(teacher):
    # Wan's condition_embedder returns (temb, timestep_proj, text, image): element 0 is one timestep token.
    config = CKTConfig(teacher=teacher, **{**SMALL, "teacher_layer": "condition_embedder"})
    model = get_peft_model(tiny_cosmos_student(), config)
    with pytest.raises(
        ValueError,
        match=r"`teacher_layer='condition_embedder'` returns a tuple of 4: \(tensor\[2, 32\], tensor\[2, 192\], "
        r"tensor\[2, 6, 32\], NoneType\); set `teacher_output_index`",
    ):
        model(**tiny_cosmos_inputs(), teacher_inputs=tiny_wan_inputs())
    config = CKTConfig(teacher=teacher, **{**SMALL, "teacher_layer": "condition_embedder"}, teacher_output_index=2)
    model = get_peft_model(tiny_cosmos_student(), config)
    assert model.extract_teacher_features(tiny_wan_inputs()).shape == (2, 6, 32)  # the text tokens
    with pytest.raises(ValueError, match=r"`teacher_output_index=3` does not name a tensor"):
        model.peft_config["default"].teacher_output_index = 3
        model.attach_teacher(teacher)
        model.extract_teacher_features(tiny_wan_inputs())
    config = CKTConfig(teacher=teacher, **SMALL, teacher_output_index=0)  # blocks.1 returns a tensor
    with pytest.raises(ValueError, match=r"returns a single tensor\[2, 32, 32\]: leave `teacher_output_index=None`"):
        get_peft_model(tiny_cosmos_student(), config)(**tiny_cosmos_inputs(), teacher_inputs=tiny_wan_inputs())


def test_teacher_sub_layer_of_another_width(teacher):
    # blocks.1.ffn.net.0 is the FFN's GELU projection (32 -> 64): its width is read from its own Linear.
    for explicit in (None, 64):
        config = CKTConfig(
            teacher=teacher, **{**SMALL, "teacher_layer": "blocks.1.ffn.net.0"}, teacher_hidden_size=explicit
        )
        model = get_peft_model(tiny_cosmos_student(), config)
        assert model.peft_config["default"].teacher_hidden_size == 64
        assert torch.isfinite(model(**tiny_cosmos_inputs(), teacher_inputs=tiny_wan_inputs()).sample).all()
    with pytest.raises(ValueError, match=r"teacher_hidden_size=48 does not match the teacher's width 64"):
        config = CKTConfig(teacher=teacher, **{**SMALL, "teacher_layer": "blocks.1.ffn.net.0"}, teacher_hidden_size=48)
        get_peft_model(tiny_cosmos_student(), config)
    # The dropout after it has no width of its own: the model's hidden size is only a guess there, and an explicit
    # width that matches the real output wins over it.
    config = CKTConfig(teacher=teacher, **{**SMALL, "teacher_layer": "blocks.1.ffn.net.1"}, teacher_hidden_size=64)
    model = get_peft_model(tiny_cosmos_student(), config)
    assert torch.isfinite(model(**tiny_cosmos_inputs(), teacher_inputs=tiny_wan_inputs()).sample).all()


@pytest.mark.parametrize(
    "make, got",
    [
        (lambda: torch.randn(2, 24), r"got a torch.float32 tensor of shape \[2, 24\] on cpu"),
        (lambda: torch.randn(2, 5, 24, 1), r"shape \[2, 5, 24, 1\]"),
        (lambda: torch.ones(2, 5, 24, dtype=torch.long), r"got a torch.int64 tensor"),
        (lambda: torch.randn(2, 5, 24, device="meta"), r"on meta"),
        (lambda: torch.randn(2, 5, 32), r"shape \[2, 5, 32\]"),
    ],
)
def test_bad_ckt_context(teacher, make, got):
    model = get_peft_model(tiny_cosmos_student(), CKTConfig(teacher=teacher, **SMALL))
    with pytest.raises(
        ValueError, match=r"`ckt_context` must be a floating-point tensor \[B, 2K\(\+1\), d_s\] = \[B, 5, 24\].*" + got
    ):
        model(**tiny_cosmos_inputs(), ckt_context=make())
    # a context from encode_teacher (or its tokens) passes
    context = model.encode_teacher(tiny_wan_inputs())
    assert torch.isfinite(model(**tiny_cosmos_inputs(), ckt_context=context.tokens).sample).all()


@pytest.mark.parametrize(
    "ablation, length",
    [({}, 5), ({"use_specialized_adapters": False}, 3), ({"use_generalized_adapter": False}, 3)],
)
def test_ablated_bank_context_passes_the_check(teacher, ablation, length):
    # The check knows the context length of every bank layout (K per branch present, + <SEP>).
    config = CKTConfig(teacher=teacher, **SMALL, **ablation)
    assert config.context_length == length
    model = get_peft_model(tiny_cosmos_student(), config)
    context = model.encode_teacher(tiny_wan_inputs())
    assert context.tokens.shape[1] == length
    assert torch.isfinite(model(**tiny_cosmos_inputs(), ckt_context=context).sample).all()
    with pytest.raises(ValueError, match=rf"= \[B, {length}, 24\]"):
        model(**tiny_cosmos_inputs(), ckt_context=torch.zeros(2, length + 1, 24))


def test_teacher_batch_of_zero_samples(teacher):
    model = get_peft_model(tiny_cosmos_student(), CKTConfig(teacher=teacher, **SMALL))
    with pytest.raises(ValueError, match=r"`teacher_inputs` hold a batch of 0 samples"):
        model.encode_teacher(tiny_wan_inputs(0))
