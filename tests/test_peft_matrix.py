"""The peft entry points a user calls, run for every CKT configuration of a small matrix.

peft asks a new method to pass the same generic battery as its built-in ones (creation, save/load, adapter management,
disabling, unloading, state dicts, low-level injection, dtype handling, training). This is the project's own version of
that battery, parametrized over CKT on its two routes and on a causal LM:

- `kwarg-append`: the context enters through a forward kwarg of a plain student (`context_kwarg`), appended;
- `module-prepend`: it enters through a student module's output (`target_modules`), prepended, top-1 routing, no
  router noise, no separator;
- `llama-prepend`: a tiny transformers Llama causal LM, `target_modules="embed_tokens"`, prepended (GPT-2 teacher).

Every model is built from config (no download) and runs in milliseconds on a CPU.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from peft import (
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from safetensors.torch import load_file
from torch import nn
from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaForCausalLM

from peft_ckt import CKTConfig
from peft_ckt.testing import TinyWorldActionModel

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

BANK = dict(
    num_context_tokens=2,
    num_experts=3,
    bottleneck_dim=8,
    router_hidden_dim=8,
    num_attention_heads=2,
    adapter_dropout=0.0,
)


class ConditionedMLP(nn.Module):
    """A plain student: `x [B, 6]` attends over a conditioning sequence `cond [B, L, 8]` -> `[B, 5]`."""

    def __init__(self, in_dim: int = 6, cond_dim: int = 8, width: int = 16, out_dim: int = 5):
        super().__init__()
        self.inp = nn.Linear(in_dim, width)
        self.cond_proj = nn.Linear(cond_dim, width)
        self.head = nn.Sequential(nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, out_dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        query = self.inp(x)  # [B, w]
        keys = self.cond_proj(cond)  # [B, L, w]
        weights = (keys @ query[:, :, None]).squeeze(-1).softmax(-1)  # [B, L]
        pooled = (weights[:, :, None] * keys).sum(1)
        return self.head(torch.cat([query, pooled], dim=-1))


def _mlp_student() -> nn.Module:
    torch.manual_seed(11)
    return ConditionedMLP().eval()


def _mlp_inputs(batch_size: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(12)
    return {
        "x": torch.randn(batch_size, 6, generator=generator),
        "cond": torch.randn(batch_size, 4, 8, generator=generator),
    }


def _wam_teacher() -> nn.Module:
    torch.manual_seed(13)
    return TinyWorldActionModel(obs_dim=5, text_dim=4, width=12, num_blocks=3).eval()


def _wam_teacher_inputs(batch_size: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(14)
    return {
        "observation": torch.randn(batch_size, 3, 5, generator=generator),
        "text_embeds": torch.randn(batch_size, 2, 4, generator=generator),
    }


def _llama_student() -> nn.Module:
    torch.manual_seed(15)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=39,
    )
    return LlamaForCausalLM(config).eval()


def _llama_inputs(batch_size: int = 3) -> dict[str, torch.Tensor]:
    ids = torch.randint(2, 39, (batch_size, 5), generator=torch.Generator().manual_seed(16))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _gpt2_teacher() -> nn.Module:
    torch.manual_seed(17)
    return GPT2Model(GPT2Config(vocab_size=30, n_positions=32, n_embd=12, n_layer=2, n_head=2)).eval()


def _gpt2_inputs(batch_size: int = 3) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 30, (batch_size, 4), generator=torch.Generator().manual_seed(18))}


@dataclass
class Case:
    """One CKT configuration with its student, teacher and inputs."""

    name: str
    make_student: Callable[[], nn.Module]
    make_teacher: Callable[[], nn.Module]
    student_inputs: Callable[[], dict[str, torch.Tensor]]
    teacher_inputs: Callable[[], dict[str, torch.Tensor]]
    config: dict[str, Any] = field(default_factory=dict)

    def make_config(self, teacher: nn.Module, **overrides: Any) -> CKTConfig:
        return CKTConfig(teacher=teacher, **{**BANK, **self.config, **overrides})

    @staticmethod
    def output(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.logits


CASES = [
    Case(
        "kwarg-append",
        _mlp_student,
        _wam_teacher,
        _mlp_inputs,
        _wam_teacher_inputs,
        dict(teacher_layer="blocks.1", context_kwarg="cond", student_hidden_size=8, top_k=2),
    ),
    Case(
        "module-prepend",
        _mlp_student,
        _wam_teacher,
        _mlp_inputs,
        _wam_teacher_inputs,
        dict(
            teacher_layer="blocks.0",
            target_modules="cond_proj",
            injection="prepend",
            top_k=1,
            router_noise=False,
            use_separator=False,
        ),
    ),
    Case(
        "llama-prepend",
        _llama_student,
        _gpt2_teacher,
        _llama_inputs,
        _gpt2_inputs,
        dict(teacher_layer="h.0", target_modules="embed_tokens", injection="prepend", top_k=2),
    ),
]


@pytest.fixture(params=CASES, ids=[case.name for case in CASES])
def case(request) -> Case:
    return request.param


_TEACHERS: dict[str, nn.Module] = {}


def teacher_of(case: Case) -> nn.Module:
    """One teacher per teacher kind for the whole module (teachers are frozen and shared, as in real use)."""
    key = case.make_teacher.__name__
    if key not in _TEACHERS:
        _TEACHERS[key] = case.make_teacher()
    return _TEACHERS[key]


def make_model(case: Case, seed: int = 0, **overrides: Any) -> PeftModel:
    student = case.make_student()
    torch.manual_seed(seed)
    return get_peft_model(student, case.make_config(teacher_of(case), **overrides))


@torch.no_grad()
def run(case: Case, model: nn.Module, **extra: Any) -> torch.Tensor:
    return case.output(model(**case.student_inputs(), teacher_inputs=case.teacher_inputs(), **extra))


@torch.no_grad()
def run_student(case: Case, student: nn.Module) -> torch.Tensor:
    return case.output(student(**case.student_inputs()))


def assert_same_after_assign(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Weights assigned straight from a checkpoint buffer (`low_cpu_mem_usage=True`) keep its memory alignment, which
    can change the summation order of CPU kernels: equal up to float rounding, not bit for bit."""
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def adapter_state(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    return get_peft_model_state_dict(model, adapter_name=adapter_name)


# ---------------------------------------------------------------------------------------------------------- creation
def test_get_peft_model_trains_only_the_bank(case):
    model = make_model(case)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".ckt.ckt_bank.default." in name for name in trainable)
    trainable_count, total = model.get_nb_trainable_parameters()
    assert 0 < trainable_count < total
    # every parameter has at least one dimension (FSDP refuses scalar parameters)
    assert all(p.ndim > 0 for p in model.parameters())
    assert not torch.equal(run(case, model.eval()), run_student(case, case.make_student()))


def test_training_step_changes_only_adapter_weights(case):
    model = make_model(case).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = case.output(model(**case.student_inputs(), teacher_inputs=case.teacher_inputs()))
    loss = out.float().pow(2).mean() + model.auxiliary_loss()
    loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(".generalized." in name for name in changed) and any(".router." in name for name in changed)
    assert all(".ckt.ckt_bank.default." in name for name in changed), changed


# ---------------------------------------------------------------------------------------------------------- save / load
def test_save_and_from_pretrained_give_identical_outputs(case, tmp_path):
    model = make_model(case, seed=0).eval()
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert keys and all(".ckt.ckt_bank." in key and ".default." not in key for key in keys)
    torch.manual_seed(123)  # a different initialisation, so that equal outputs prove the weights were loaded
    loaded = PeftModel.from_pretrained(case.make_student(), tmp_path, teacher=teacher_of(case)).eval()
    assert torch.equal(run(case, loaded), run(case, model))
    assert not any(p.requires_grad for p in loaded.parameters())  # loaded for inference by default
    trainable = PeftModel.from_pretrained(case.make_student(), tmp_path, teacher=teacher_of(case), is_trainable=True)
    assert any(p.requires_grad for p in trainable.parameters())


def test_load_adapter_under_a_second_name(case, tmp_path):
    source = make_model(case, seed=1).eval()
    source.save_pretrained(tmp_path)
    model = make_model(case, seed=2).eval()
    first = run(case, model)
    model.load_adapter(tmp_path, adapter_name="loaded")
    model.attach_teacher(teacher_of(case), adapter_name="loaded")  # built from config: no stored teacher reference
    assert torch.equal(run(case, model), first)  # loading does not activate
    model.set_adapter("loaded")
    assert torch.equal(run(case, model), run(case, source))


def test_state_dict_round_trip(case):
    source = make_model(case, seed=3).eval()
    state = adapter_state(source)
    assert state and all("ckt_bank" in key for key in state)
    target = make_model(case, seed=4).eval()
    assert not torch.equal(run(case, target), run(case, source))
    result = set_peft_model_state_dict(target, state)
    assert not [key for key in result.missing_keys if "ckt_" in key]
    assert torch.equal(run(case, target), run(case, source))


def test_config_round_trip(case, tmp_path):
    config = case.make_config(teacher_of(case))
    as_dict = config.to_dict()
    json.dumps(as_dict)  # plain JSON: the teacher is stored as a reference
    config.save_pretrained(tmp_path)
    reloaded = CKTConfig.from_pretrained(tmp_path, teacher=teacher_of(case))
    assert reloaded.to_dict() == as_dict
    assert reloaded.teacher_module is teacher_of(case)
    assert CKTConfig(**{k: v for k, v in as_dict.items() if k in CKTConfig.__dataclass_fields__}).to_dict() == as_dict


# ---------------------------------------------------------------------------------------------------------- adapters
def test_add_set_delete_adapter(case):
    model = make_model(case, seed=5).eval()
    first = run(case, model)
    torch.manual_seed(6)
    model.add_adapter("other", case.make_config(teacher_of(case)))
    assert model.active_adapters == ["default"]
    assert torch.equal(run(case, model), first)
    model.set_adapter("other")
    other = run(case, model)
    assert not torch.equal(other, first)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".ckt_bank.other." in n for n in trainable)
    model.set_adapter("default")
    model.delete_adapter("other")
    assert list(model.peft_config) == ["default"]
    assert not any(".other." in n for n, _ in model.named_parameters())
    assert torch.equal(run(case, model), first)


def test_disable_adapter_gives_the_student(case):
    model = make_model(case).eval()
    expected = run_student(case, case.make_student())
    with model.disable_adapter():
        assert torch.equal(run(case, model), expected)  # teacher_inputs are accepted and ignored
        assert torch.equal(case.output(model(**case.student_inputs())), expected)
    assert not torch.equal(run(case, model), expected)


def test_mixed_adapter_batch_is_refused(case):
    model = make_model(case).eval()
    batch = len(next(iter(case.student_inputs().values())))
    with pytest.raises(ValueError, match=r"one adapter per forward.*adapter_names"):
        run(case, model, adapter_names=["default"] * (batch - 1) + ["other"])
    # a batch that names one adapter throughout is an ordinary forward with that adapter
    assert torch.equal(run(case, model, adapter_names=["default"] * batch), run(case, model))


# ---------------------------------------------------------------------------------------------------------- unload / merge
def test_unload_returns_the_original_student(case, tmp_path):
    reference = case.make_student()
    model = make_model(case)
    run(case, model)
    student = model.unload()
    assert type(student) is type(reference)
    assert not hasattr(student, "peft_config") and not hasattr(student, "ckt")
    assert student.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), reference.state_dict().values()))
    assert len(student._forward_pre_hooks) == len(reference._forward_pre_hooks)
    assert len(student._forward_hooks) == len(reference._forward_hooks)
    assert "_validate_model_kwargs" not in vars(student)
    assert torch.equal(run_student(case, student), run_student(case, reference))
    # a new CKT model on the unloaded student starts from scratch
    again = get_peft_model(student, case.make_config(teacher_of(case)))
    assert list(again.peft_config) == ["default"]
    again.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_merging_is_refused_with_a_clear_error(case):
    model = make_model(case)
    for call in (
        model.merge_and_unload,
        model.merge_adapter,
        model.unmerge_adapter,
        lambda: model.add_weighted_adapter(["default"], [1.0], "combined"),
    ):
        with pytest.raises(ValueError, match=r"CKT .*no weights to merge"):
            call()
    assert list(model.peft_config) == ["default"]
    assert hasattr(model.get_base_model(), "ckt")  # nothing was removed


# ---------------------------------------------------------------------------------------------------------- low level
def test_inject_adapter_in_model_makes_the_student_inject(case):
    student = case.make_student()
    torch.manual_seed(7)
    injected = inject_adapter_in_model(case.make_config(teacher_of(case)), student)
    assert injected is student and isinstance(student.ckt, nn.Module)
    model = make_model(case, seed=7).eval()  # same seed: same bank
    assert torch.equal(run(case, student.eval()), run(case, model))
    assert not torch.equal(run(case, student), run_student(case, case.make_student()))
    # the transformers / diffusers integration path: raw state dicts on raw models
    state = get_peft_model_state_dict(student)
    other = inject_adapter_in_model(case.make_config(teacher_of(case)), case.make_student(), low_cpu_mem_usage=True)
    assert all(p.device.type == "meta" for p in other.ckt.parameters())
    set_peft_model_state_dict(other, state, low_cpu_mem_usage=True)
    assert not any(p.device.type == "meta" for p in other.parameters())
    assert_same_after_assign(run(case, other.eval()), run(case, student))


def test_low_cpu_mem_usage_everywhere(case, tmp_path):
    source = make_model(case, seed=8).eval()
    source.save_pretrained(tmp_path)
    expected = run(case, source)
    empty = get_peft_model(case.make_student(), case.make_config(teacher_of(case)), low_cpu_mem_usage=True)
    assert all(p.device.type == "meta" for p in empty.base_model.model.ckt.parameters())
    set_peft_model_state_dict(empty, adapter_state(source), low_cpu_mem_usage=True)
    assert_same_after_assign(run(case, empty.eval()), expected)

    loaded = PeftModel.from_pretrained(
        case.make_student(), tmp_path, teacher=teacher_of(case), low_cpu_mem_usage=True
    ).eval()
    assert not any(p.device.type == "meta" for p in loaded.parameters())
    assert_same_after_assign(run(case, loaded), expected)

    model = make_model(case, seed=9).eval()
    model.load_adapter(tmp_path, adapter_name="loaded", low_cpu_mem_usage=True)
    model.attach_teacher(teacher_of(case), adapter_name="loaded")
    model.set_adapter("loaded")
    assert not any(p.device.type == "meta" for p in model.parameters())
    assert_same_after_assign(run(case, model), expected)


def test_deepcopy_after_a_training_forward(case):
    model = make_model(case).train()
    case.output(model(**case.student_inputs(), teacher_inputs=case.teacher_inputs())).float().mean().backward()
    copied = copy.deepcopy(model).eval()
    model.eval()
    assert torch.equal(run(case, copied), run(case, model))
    assert copied.peft_config["default"].teacher_module is teacher_of(case)  # the frozen teacher is shared
    assert not any(p is q for p in copied.parameters() for q in list(model.parameters())[:5])
    # the copy is independent: unloading it leaves the original working
    copied.unload()
    assert hasattr(model.get_base_model(), "ckt") and torch.equal(run(case, model), run(case, model))


def test_autocast_adapter_dtype(case):
    student = case.make_student().to(torch.bfloat16)
    model = get_peft_model(student, case.make_config(teacher_of(case)))
    assert {p.dtype for p in model.base_model.model.ckt.parameters()} == {torch.float32}
    student = case.make_student().to(torch.bfloat16)
    model = get_peft_model(student, case.make_config(teacher_of(case)), autocast_adapter_dtype=False)
    assert {p.dtype for p in model.base_model.model.ckt.parameters()} == {torch.bfloat16}
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in case.student_inputs().items()}
    with torch.no_grad():
        out = case.output(model(**inputs, teacher_inputs=case.teacher_inputs()))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
