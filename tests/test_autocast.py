"""bf16 autocast is safe: the router's softmax, its top-k weights and L_bal stay fp32, routing matches fp32, the
attention softmax runs in fp32, and a training step through the peft model gives finite fp32 gradients."""

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

from peft_ckt import CKTAdapterBank, CKTConfig
from peft_ckt.testing import tiny_cosmos_inputs, tiny_cosmos_student, tiny_wan_inputs, tiny_wan_teacher

CONFIG = dict(
    num_context_tokens=4, num_experts=4, top_k=2, bottleneck_dim=32, router_hidden_dim=32, adapter_dropout=0.0
)


def bank_and_features(student_width: int, heads: int) -> tuple[CKTAdapterBank, torch.Tensor]:
    torch.manual_seed(0)
    config = CKTConfig(teacher_layer="blocks.0", num_attention_heads=heads, **CONFIG)
    bank = CKTAdapterBank(config, teacher_hidden_size=48, student_hidden_size=student_width).eval()
    with torch.no_grad():  # well-separated router logits, so that bf16 rounding cannot change the choice
        bank.router.mlp[-1].weight.mul_(20)
    return bank, torch.randn(6, 40, 48)


# d_s=64 with 2 heads x 4 queries uses the absorbed attention; d_s=8 with 4 heads the projected one (SDPA)
@pytest.mark.parametrize("student_width,heads,absorbed", [(64, 2, True), (8, 4, False)])
def test_bf16_autocast_keeps_routing_and_balance_in_fp32(student_width, heads, absorbed):
    bank, features = bank_and_features(student_width, heads)
    assert bank.generalized.cross_attention.uses_absorbed_attention(features.shape[1]) is absorbed
    reference = bank(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        context = bank(features)
    assert context.router_probs.dtype == torch.float32
    assert context.topk_weights.dtype == torch.float32
    assert context.load_balance_loss.dtype == torch.float32
    # fp32 accuracy of the normalisations (bf16 would be off by ~1e-3)
    torch.testing.assert_close(context.router_probs.sum(-1), torch.ones(6), rtol=0, atol=1e-6)
    torch.testing.assert_close(context.topk_weights.sum(-1), torch.ones(6), rtol=0, atol=1e-6)
    torch.testing.assert_close(context.topk_indices, reference.topk_indices)
    torch.testing.assert_close(context.router_probs, reference.router_probs, rtol=0.05, atol=0.02)
    torch.testing.assert_close(context.load_balance_loss, reference.load_balance_loss, rtol=0.02, atol=0.02)
    # the context itself is computed in bf16 and stays close to fp32
    assert torch.isfinite(context.tokens).all()
    torch.testing.assert_close(context.tokens.float(), reference.tokens, rtol=0.1, atol=0.1)


def test_absorbed_attention_softmax_runs_in_fp32_under_autocast():
    bank, features = bank_and_features(64, 2)
    attention = bank.generalized.cross_attention
    tokens = torch.randn(2, 300, 64) * 30  # large logits: a bf16 softmax would lose the small probabilities
    softmax_dtypes = []
    original = torch.Tensor.softmax

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        softmax_dtypes.append(out.dtype)
        return out

    torch.Tensor.softmax = spy
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            attention(tokens)
    finally:
        torch.Tensor.softmax = original
    assert softmax_dtypes == [torch.float32]


def test_training_step_under_bf16_autocast_gives_finite_fp32_gradients():
    teacher, student = tiny_wan_teacher(num_layers=2), tiny_cosmos_student(num_layers=2)
    model = get_peft_model(
        student,
        CKTConfig(
            teacher=teacher,
            teacher_layer="blocks.0",
            num_context_tokens=4,
            bottleneck_dim=16,
            router_hidden_dim=16,
            num_attention_heads=2,
        ),
    ).train()
    inputs = tiny_cosmos_inputs(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs, teacher_inputs=tiny_wan_inputs(2))
        loss = F.mse_loss(out.sample.float(), torch.zeros_like(out.sample, dtype=torch.float32))
        aux = model.auxiliary_loss()
    assert aux.dtype == torch.float32 and torch.isfinite(aux)
    (loss + aux).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    # the router got a gradient through L_bal and the top-k weights
    router_grads = [p.grad for p in model.base_model.get_bank().router.mlp.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in router_grads)
