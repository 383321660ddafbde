"""CKT behaves like a built-in peft method beyond the quickstart: routing gradients at top-1, meta-device loading,
no scalar parameters, a clean `unload()`, no silent no-ops, generation with the adapter disabled, and the rough edges
(deepcopy, merge errors, attribute probing, adapter dtype, disabled router noise)."""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
from peft import PeftModel, TaskType, get_peft_model, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from peft_ckt import CKTAdapterBank, CKTConfig
from peft_ckt.testing import TinyWorldActionModel

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

K = 2
SMALL = dict(
    num_context_tokens=K,
    num_experts=3,
    top_k=2,
    bottleneck_dim=8,
    router_hidden_dim=8,
    num_attention_heads=2,
    adapter_dropout=0.0,
)
LM = dict(SMALL, teacher_layer="h.0", target_modules="embed_tokens", injection="prepend")


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    torch.manual_seed(0)
    return GPT2Model(GPT2Config(vocab_size=30, n_positions=32, n_embd=12, n_layer=2, n_head=2)).eval()


def llama_config() -> LlamaConfig:
    return LlamaConfig(
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


def tiny_llama(seed: int = 1) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config()).eval()


def teacher_inputs(batch_size: int = 2) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 30, (batch_size, 4), generator=torch.Generator().manual_seed(2))}


def student_ids(batch_size: int = 2, length: int = 5) -> torch.Tensor:
    return torch.randint(2, 39, (batch_size, length), generator=torch.Generator().manual_seed(3))


def lm_model(teacher: nn.Module, seed: int = 0, **overrides) -> PeftModel:
    student = tiny_llama()
    torch.manual_seed(seed)
    return get_peft_model(student, CKTConfig(teacher=teacher, **{**LM, **overrides})).eval()


# ------------------------------------------------------------------------------------------ 1. top-1 routing learns
@pytest.mark.parametrize("top_k", [1, 2])
def test_router_learns_from_the_task_loss_for_every_top_k(top_k):
    torch.manual_seed(0)
    config = CKTConfig(teacher_layer="blocks.0", **{**SMALL, "top_k": top_k, "router_noise": False})
    bank = CKTAdapterBank(config, teacher_hidden_size=12, student_hidden_size=8).train()
    context = bank(torch.randn(6, 5, 12))
    if top_k == 1:  # the gate's value is the renormalised weight (1), its gradient that of the router probability
        assert torch.equal(context.topk_weights, torch.ones(6, 1))
    context.tokens.pow(2).sum().backward()  # a task loss only: no load-balancing term
    router_grad = max(p.grad.abs().max().item() for p in bank.router.mlp.parameters())
    assert router_grad > 1e-6


def test_top1_gate_gradient_is_the_log_probability_gradient():
    torch.manual_seed(0)
    config = CKTConfig(teacher_layer="blocks.0", **{**SMALL, "top_k": 1, "router_noise": False})
    router = CKTAdapterBank(config, teacher_hidden_size=12, student_hidden_size=8).router
    features = torch.randn(4, 3, 12)
    probs, indices, weights = router(features)
    weights.sum().backward()
    grads = [p.grad.clone() for p in router.mlp.parameters()]
    router.zero_grad()
    probs, _, _ = router(features)
    probs.gather(1, indices).log().sum().backward()
    for got, expected in zip(grads, [p.grad for p in router.mlp.parameters()]):
        torch.testing.assert_close(got, expected)


# ------------------------------------------------------------------------------------------ 2. meta device (see also matrix)
def test_low_cpu_mem_usage_builds_the_bank_on_meta(teacher, tmp_path):
    source = lm_model(teacher, seed=4)
    source.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path, teacher=teacher, low_cpu_mem_usage=True).eval()
    ids = student_ids()
    with torch.no_grad():
        expected = source(input_ids=ids, teacher_inputs=teacher_inputs()).logits
        # equal up to float rounding: the assigned checkpoint tensors keep the file buffer's memory alignment
        torch.testing.assert_close(loaded(input_ids=ids, teacher_inputs=teacher_inputs()).logits, expected)
    injected = inject_adapter_in_model(CKTConfig(teacher=teacher, **LM), tiny_llama(), low_cpu_mem_usage=True)
    assert {p.device.type for p in injected.ckt.parameters()} == {"meta"}


# ------------------------------------------------------------------------------------------ 3. no scalar parameters
def test_no_scalar_parameters_and_fsdp_accepts_the_model(teacher):
    model = lm_model(teacher)
    assert model.get_bank().router.noise_scale.shape == (1,)
    assert all(p.ndim > 0 for p in model.parameters())
    distributed = pytest.importorskip("torch.distributed")
    if not distributed.is_available():
        pytest.skip("torch.distributed is not available")
    from torch.distributed.fsdp import FullyShardedDataParallel

    store = distributed.HashStore()
    distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        wrapped = FullyShardedDataParallel(model, use_orig_params=True, device_id=torch.device("cpu"))
        assert isinstance(wrapped, FullyShardedDataParallel)
    finally:
        distributed.destroy_process_group()


def test_checkpoint_with_a_scalar_noise_scale_still_loads(teacher, tmp_path):
    source = lm_model(teacher, seed=5)
    with torch.no_grad():
        source.get_bank().router.noise_scale.fill_(0.25)
    source.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    state = load_file(path)
    (key,) = [k for k in state if k.endswith("router.noise_scale")]
    state[key] = state[key].reshape(())  # as written before the parameter had a dimension
    save_file(state, path, metadata={"format": "pt"})
    for low_cpu_mem_usage in (False, True):
        loaded = PeftModel.from_pretrained(
            tiny_llama(), tmp_path, teacher=teacher, low_cpu_mem_usage=low_cpu_mem_usage
        )
        assert loaded.get_bank().router.noise_scale.shape == (1,)
        assert loaded.get_bank().router.noise_scale.item() == 0.25


# ------------------------------------------------------------------------------------------ 4. unload (see also matrix)
def test_unload_leaves_no_peft_state_on_the_student(teacher, tmp_path):
    model = lm_model(teacher)
    student = model.unload()
    assert not hasattr(student, "peft_config")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = get_peft_model(student, CKTConfig(teacher=teacher, **LM))
    assert not [w for w in caught if "peft_config" in str(w.message)]  # "Already found a `peft_config` attribute"
    again.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    with torch.no_grad():
        again(input_ids=student_ids(), teacher_inputs=teacher_inputs())


# ------------------------------------------------------------------------------------------ 5. no silent no-ops
def test_student_injected_with_inject_adapter_in_model_uses_its_context():
    torch.manual_seed(0)
    teacher = TinyWorldActionModel(obs_dim=5, text_dim=4, width=12, num_blocks=2).eval()
    inputs = {"observation": torch.randn(2, 3, 12), "text_embeds": torch.randn(2, 4, 10)}
    t_inputs = {"observation": torch.randn(2, 3, 5), "text_embeds": torch.randn(2, 2, 4)}
    torch.manual_seed(1)
    # frozen, as injection leaves it (torch's attention takes another kernel path for trainable weights)
    student = TinyWorldActionModel().eval().requires_grad_(False)
    with torch.no_grad():
        bare, _ = student(**inputs)
        inject_adapter_in_model(
            CKTConfig(teacher=teacher, teacher_layer="blocks.0", target_modules="text_proj", **SMALL), student
        )
        frames, _ = student(**inputs, teacher_inputs=t_inputs)
        assert not torch.allclose(frames, bare)
        again, _ = student(**inputs)  # without teacher inputs the student runs alone
        assert torch.equal(again, bare)


def test_target_module_route_injects_into_inputs_embeds(teacher):
    model = lm_model(teacher)
    ids = student_ids()
    embeds = model.get_base_model().get_input_embeddings()(ids)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        from_ids = model(input_ids=ids, attention_mask=mask, teacher_inputs=teacher_inputs()).logits
        from_embeds = model(inputs_embeds=embeds, attention_mask=mask, teacher_inputs=teacher_inputs()).logits
    assert from_embeds.shape == (2, ids.shape[1] + 2 * K + 1, 40)
    torch.testing.assert_close(from_embeds, from_ids)


def test_target_module_that_never_runs_is_an_error():
    torch.manual_seed(0)
    teacher = TinyWorldActionModel(obs_dim=5, text_dim=4, width=12, num_blocks=2).eval()

    class Student(nn.Module):
        def __init__(self):
            super().__init__()
            self.text_proj, self.unused = nn.Linear(4, 8), nn.Linear(4, 8)

        def forward(self, text):
            return self.text_proj(text).mean(1)

    config = CKTConfig(teacher=teacher, teacher_layer="blocks.0", target_modules="unused", **SMALL)
    model = get_peft_model(Student(), config)
    t_inputs = {"observation": torch.randn(2, 3, 5), "text_embeds": torch.randn(2, 2, 4)}
    with pytest.raises(RuntimeError, match=r"target module `unused` did not run"):
        model(text=torch.randn(2, 3, 4), teacher_inputs=t_inputs)


def test_sequence_classification_trains_and_saves_its_head(teacher, tmp_path):
    torch.manual_seed(1)
    student = LlamaForSequenceClassification(llama_config()).eval()
    reference = copy.deepcopy(student)
    config = CKTConfig(teacher=teacher, task_type=TaskType.SEQ_CLS, **LM)
    model = get_peft_model(student, config).eval()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("score.modules_to_save.default" in n for n in trainable)
    assert all("ckt_bank.default" in n or "score.modules_to_save.default" in n for n in trainable)
    # the classifier pools the last real token, after the prepended context: right padding is handled
    ids = student_ids(length=6)
    ids[0, 4:] = 0  # padding
    mask = (ids != 0).long()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, teacher_inputs=teacher_inputs()).logits
        hidden = []
        handle = model.get_base_model().model.norm.register_forward_hook(lambda m, a, out: hidden.append(out))
        model(input_ids=ids, attention_mask=mask, teacher_inputs=teacher_inputs())
        handle.remove()
        count = 2 * K + 1
        last = torch.tensor([count + 3, count + 5])
        expected = model.get_base_model().score(hidden[0][torch.arange(2), last])
    torch.testing.assert_close(logits, expected)

    labels = torch.tensor([0, 1])
    model.train()
    model(input_ids=ids, attention_mask=mask, labels=labels, teacher_inputs=teacher_inputs()).loss.backward()
    assert model.get_base_model().score.modules_to_save["default"].weight.grad is not None
    with torch.no_grad():
        model.get_base_model().score.modules_to_save["default"].weight.add_(1.0)
    model.eval()
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert any(key.endswith("score.weight") for key in keys)
    loaded = PeftModel.from_pretrained(reference, tmp_path, teacher=teacher).eval()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, teacher_inputs=teacher_inputs()).logits
        got = loaded(input_ids=ids, attention_mask=mask, teacher_inputs=teacher_inputs()).logits
    assert torch.equal(got, expected)


def test_modules_to_save_is_a_config_field(teacher):
    config = CKTConfig(teacher=teacher, modules_to_save=["lm_head"], **LM)
    model = get_peft_model(tiny_llama(), config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lm_head.modules_to_save.default" in n for n in trainable)
    assert any("lm_head" in key for key in get_peft_model_state_dict(model))
    unloaded = model.unload()
    assert type(unloaded.lm_head) is nn.Linear


# ------------------------------------------------------------------------------------------ 6. generate, adapter disabled
def test_generate_with_disabled_adapter_accepts_teacher_inputs(teacher):
    model = lm_model(teacher)
    ids = student_ids(length=4)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    with torch.no_grad():
        with model.disable_adapter():
            got = model.generate(input_ids=ids, teacher_inputs=teacher_inputs(), **kwargs)
        expected = tiny_llama().generate(input_ids=ids, **kwargs)
        assert torch.equal(got, expected)
        with_context = model.generate(input_ids=ids, teacher_inputs=teacher_inputs(), **kwargs)
    assert with_context.shape == expected.shape


# ------------------------------------------------------------------------------------------ 7. rough edges
def test_deepcopy_after_a_forward_with_gradients(teacher):
    model = lm_model(teacher).train()
    out = model(input_ids=student_ids(), labels=student_ids(), teacher_inputs=teacher_inputs())
    copied = copy.deepcopy(model)  # the last context (with its autograd graph) is not copied into the clone's graph
    assert copied.auxiliary_loss().grad_fn is None
    out.loss.backward()  # the original graph is intact
    assert model.auxiliary_loss().requires_grad


def test_merge_errors_name_the_reason(teacher):
    model = lm_model(teacher)
    for call in (model.merge_adapter, model.unmerge_adapter, model.merge_and_unload):
        with pytest.raises(ValueError, match=r"CKT adds context tokens.*no weights to merge.*unload\(\)"):
            call()
    with pytest.raises(ValueError, match=r"add_weighted_adapter"):
        model.add_weighted_adapter(["default"], [1.0], "combined")
    layer = model.get_base_model().ckt
    with pytest.raises(ValueError, match=r"no weights to merge"):
        layer.merge()


def test_probing_the_layer_for_weights_does_not_recurse(teacher):
    layer = lm_model(teacher).get_base_model().ckt
    assert not hasattr(layer, "weight") and not hasattr(layer, "bias")


def test_adapter_dtype_follows_the_student_without_autocast(teacher):
    student = tiny_llama().to(torch.bfloat16)
    model = get_peft_model(student, CKTConfig(teacher=teacher, **LM), autocast_adapter_dtype=False)
    assert {p.dtype for p in model.get_bank().parameters()} == {torch.bfloat16}
    model = get_peft_model(tiny_llama().to(torch.bfloat16), CKTConfig(teacher=teacher, **LM))
    assert {p.dtype for p in model.get_bank().parameters()} == {torch.float32}


def test_router_without_noise_has_no_noise_parameter(teacher, tmp_path):
    model = lm_model(teacher, router_noise=False)
    assert not any("noise_scale" in n for n, _ in model.named_parameters())
    model.save_pretrained(tmp_path)
    assert not any("noise_scale" in k for k in load_file(tmp_path / "adapter_model.safetensors"))
    # an older checkpoint that saved the unused scale still loads
    path = tmp_path / "adapter_model.safetensors"
    state = load_file(path)
    state["base_model.model.ckt.ckt_bank.router.noise_scale"] = torch.zeros(())
    save_file(state, path, metadata={"format": "pt"})
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path, teacher=teacher)
    assert not any("noise_scale" in n for n, _ in loaded.named_parameters())
    # and noise on: the scale is trained
    noisy = lm_model(teacher, router_noise=True).train()
    noisy(input_ids=student_ids(), labels=student_ids(), teacher_inputs=teacher_inputs()).loss.backward()
    assert noisy.get_bank().router.noise_scale.grad is not None
