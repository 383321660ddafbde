"""Attention-weight dropout in the learnable-query cross-attention (the paper's `nn.MultiheadAttention(dropout=0.1)`):
active in training only, the same in the absorbed and the projected form, and old adapters still load."""

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

from peft_ckt import CKTAdapterBank, CKTConfig
from peft_ckt.layer import LearnableQueryCrossAttention
from peft_ckt.testing import TinyWorldActionModel

torch.set_num_threads(1)


def attention_with_biases(dropout: float, hidden: int = 64, queries: int = 4, heads: int = 4):
    torch.manual_seed(0)
    attention = LearnableQueryCrossAttention(hidden, num_queries=queries, num_heads=heads, dropout=dropout).double()
    with torch.no_grad():  # a non-zero value bias must follow the row sums of the dropped weights
        attention.to_v.bias.normal_()
    return attention


@pytest.mark.parametrize("num_tokens", [1, 7, 50])
def test_both_forms_are_equal_in_training_with_the_same_mask(num_tokens):
    attention = attention_with_biases(dropout=0.4).train()
    tokens = torch.randn(3, num_tokens, 64, dtype=torch.float64, requires_grad=True)
    keep = attention.dropout_mask(tokens)
    assert keep.shape == (3, 4, 4, num_tokens) and keep.dtype == torch.bool
    params = [tokens, *attention.parameters()]

    def run(attend):
        out = attend(attention.to_q(attention.queries), tokens, keep)
        return out, torch.autograd.grad(out.square().sum(), params, allow_unused=True)

    absorbed, absorbed_grads = run(attention._attend_absorbed)
    projected, projected_grads = run(attention._attend_projected)
    torch.testing.assert_close(absorbed, projected, rtol=1e-10, atol=1e-10)
    for a, p in zip(absorbed_grads, projected_grads):
        assert (a is None) == (p is None)
        if a is not None:
            torch.testing.assert_close(a, p, rtol=1e-9, atol=1e-10)
    # The mask mattered: without it both forms give another result.
    assert not torch.allclose(attention._attend_projected(attention.to_q(attention.queries), tokens), projected)


def test_forward_draws_one_mask_for_either_form():
    attention = attention_with_biases(dropout=0.3).train()
    tokens = torch.randn(2, 9, 64, dtype=torch.float64)
    outputs = []
    for absorbed in (True, False):
        attention.uses_absorbed_attention = lambda num_tokens, absorbed=absorbed: absorbed
        torch.manual_seed(7)
        outputs.append(attention(tokens))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-10)


def reference_multihead_attention(attention: LearnableQueryCrossAttention, dropout: float) -> nn.MultiheadAttention:
    """torch's own multi-head attention with the same weights (fused in_proj, as the paper's code holds them), plus
    a random key bias: it cancels in the softmax, so the outputs stay the same."""
    hidden = attention.queries.shape[1]
    mha = nn.MultiheadAttention(hidden, attention.num_heads, dropout=dropout, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attention.to_q.weight, attention.to_k.weight, attention.to_v.weight]))
        key_bias = torch.randn_like(attention.to_q.bias)
        mha.in_proj_bias.copy_(torch.cat([attention.to_q.bias, key_bias, attention.to_v.bias]))
        mha.out_proj.weight.copy_(attention.to_out.weight)
        mha.out_proj.bias.copy_(attention.to_out.bias)
    return mha


@pytest.mark.parametrize("num_tokens", [2, 40])  # the projected and the absorbed form
def test_eval_is_unchanged_and_matches_multihead_attention(num_tokens):
    attention = attention_with_biases(dropout=0.5).eval()
    tokens = torch.randn(3, num_tokens, 64, dtype=torch.float64)
    out = attention(tokens)
    attention.dropout = 0.0  # as before the field existed
    assert torch.equal(attention(tokens), out)
    mha = reference_multihead_attention(attention, dropout=0.5).eval()
    queries = attention.queries.expand(3, -1, -1)
    expected = attention.norm(queries + mha(queries, tokens, tokens, need_weights=False)[0])
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("num_tokens", [2, 40])
def test_dropout_is_active_in_training_only(num_tokens):
    attention = attention_with_biases(dropout=0.5)
    tokens = torch.randn(3, num_tokens, 64, dtype=torch.float64)
    evaluated = attention.eval()(tokens)
    attention.train()
    torch.manual_seed(1)
    first = attention(tokens)
    torch.manual_seed(2)
    second = attention(tokens)
    assert not torch.allclose(first, evaluated) and not torch.allclose(first, second)
    # Roughly half of the attention weights are dropped.
    assert 0.4 < (~attention.dropout_mask(torch.zeros(64, 40, 64))).float().mean() < 0.6
    attention.dropout = 0.0  # no dropout: training gives the eval result
    torch.testing.assert_close(attention(tokens), evaluated, rtol=1e-10, atol=1e-10)


def test_config_field_reaches_every_branch_and_is_validated():
    config = CKTConfig(teacher_layer="blocks.0", num_experts=3, top_k=1, attention_dropout=0.25)
    bank = CKTAdapterBank(config, 8, 16)
    branches = [bank.generalized, *bank.specialized]
    assert [branch.cross_attention.dropout for branch in branches] == [0.25] * 4
    assert CKTConfig(teacher_layer="blocks.0").attention_dropout == 0.1  # the paper's value
    with pytest.raises(ValueError, match="attention_dropout"):
        CKTConfig(teacher_layer="blocks.0", attention_dropout=1.0)


def test_adapter_saved_without_the_field_loads_with_the_default(tmp_path):
    torch.manual_seed(0)
    teacher = TinyWorldActionModel(obs_dim=20, text_dim=6, width=40, num_blocks=2).eval()
    config = CKTConfig(
        teacher=teacher,
        teacher_layer="blocks.1",
        target_modules="text_proj",
        num_context_tokens=3,
        num_experts=4,
        top_k=2,
        bottleneck_dim=8,
        router_hidden_dim=8,
        num_attention_heads=2,
        attention_dropout=0.3,
    )
    torch.manual_seed(1)
    model = get_peft_model(TinyWorldActionModel(), config).eval()
    model.save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    assert saved["attention_dropout"] == 0.3
    del saved["attention_dropout"]  # as written by an older peft-ckt
    config_path.write_text(json.dumps(saved))

    torch.manual_seed(1)  # the same student
    reloaded = PeftModel.from_pretrained(TinyWorldActionModel(), tmp_path, teacher=teacher).eval()
    assert reloaded.peft_config["default"].attention_dropout == 0.1
    teacher_inputs = {"observation": torch.randn(2, 5, 20), "text_embeds": torch.randn(2, 4, 6)}
    student_inputs = {"observation": torch.randn(2, 5, 12), "text_embeds": torch.randn(2, 4, 10)}
    with torch.no_grad():
        expected, _ = model(**student_inputs, teacher_inputs=teacher_inputs)
        again, _ = reloaded(**student_inputs, teacher_inputs=teacher_inputs)
    assert torch.equal(again, expected)
