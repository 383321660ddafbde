"""Inputs a user can get wrong end in a named error early, not in NaN outputs or a late traceback (issue 27)."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from peft_ckt import CKTConfig
from peft_ckt.testing import (
    TINY_CKT_KWARGS,
    tiny_cosmos_inputs,
    tiny_cosmos_student,
    tiny_wan_inputs,
)

torch.set_num_threads(1)

SMALL = TINY_CKT_KWARGS


@pytest.fixture()
def model(teacher):
    return get_peft_model(tiny_cosmos_student(), CKTConfig(teacher=teacher, **SMALL))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_encode_features_refuses_non_finite_features(model, bad):
    features = torch.randn(2, 5, model.get_bank().teacher_hidden_size)
    features[1, 2, 3] = bad
    with pytest.raises(ValueError, match=r"teacher features given to the CKT adapter bank hold NaN or inf"):
        model.encode_features(features)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_supplied_ckt_context_with_non_finite_values_is_refused(model, bad):
    context = model.encode_teacher(tiny_wan_inputs(2))
    model(**tiny_cosmos_inputs(2), ckt_context=context)  # a context the model made passes
    tokens = context.tokens.detach().clone()
    tokens[0, 0, 0] = bad
    with pytest.raises(ValueError, match=r"`ckt_context` holds NaN or inf values"):
        model(**tiny_cosmos_inputs(2), ckt_context=tokens)


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -1.0])
def test_config_refuses_non_finite_load_balance_weight(weight):
    with pytest.raises(ValueError, match=r"`load_balance_weight` must be a finite number >= 0"):
        CKTConfig(load_balance_weight=weight, **SMALL)


@pytest.mark.parametrize("weight_decay", [-1.0, float("nan"), float("inf")])
def test_training_arguments_refuse_bad_weight_decay(weight_decay):
    from peft_ckt.training.arguments import CKTTrainingArguments

    with pytest.raises(ValueError, match=r"--weight-decay must be a finite number >= 0"):
        CKTTrainingArguments(preset="tiny", weight_decay=weight_decay)


def test_non_finite_saved_weights_are_named_at_load(model, teacher, tmp_path):
    model.save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match=rf"{weights} hold NaN or inf values in 1 tensor\(s\): {key}"):
        PeftModel.from_pretrained(tiny_cosmos_student(), str(tmp_path), teacher=teacher)


# ---------------------------------------------------------------------------------------------- peft rows
def test_ckt_layer_in_and_out_features_are_the_bank_widths(model, teacher):
    layer = model.base_model.ckt_layer
    bank = model.get_bank()
    assert layer.in_features == bank.teacher_hidden_size  # d_t: what the bank reads
    assert layer.out_features == bank.student_hidden_size  # d_s: what the bank writes
    assert bank.teacher_hidden_size != bank.student_hidden_size  # the test tells them apart


@pytest.mark.parametrize("zero_idle", [False, True])
def test_zero_idle_expert_grads(teacher, zero_idle):
    torch.manual_seed(0)
    config = CKTConfig(teacher=teacher, zero_idle_expert_grads=zero_idle, **{**SMALL, "num_experts": 4})
    model = get_peft_model(tiny_cosmos_student(), config)
    bank = model.get_bank()
    with torch.no_grad():  # route every sample to expert 0: the others are idle
        bank.router.mlp[-1].bias.copy_(torch.tensor([50.0, 0.0, 0.0, 0.0]))
    model.train()
    out = model(**tiny_cosmos_inputs(2), teacher_inputs=tiny_wan_inputs(2))
    out_tensor = out if isinstance(out, torch.Tensor) else out[0]
    out_tensor.float().square().mean().backward()
    assert model.last_context().topk_indices.flatten().tolist() == [0, 0]
    assert bank.specialized[0].down.weight.grad is not None
    for expert in bank.specialized[1:]:
        grads = [p.grad for p in expert.parameters()]
        if zero_idle:
            assert all(g is not None and not g.any() for g in grads)
        else:
            assert all(g is None for g in grads)
