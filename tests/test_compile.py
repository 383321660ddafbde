"""The adapter bank's fast paths: exact against the references, one host sync per call, and `torch.compile`-able
in a single graph (with `capture_scalar_outputs`) while staying sparse."""

import os

import pytest
import torch
from torch.overrides import TorchFunctionMode

from peft_ckt import CKTAdapterBank, CKTConfig
from peft_ckt.layer import LearnableQueryCrossAttention

SMALL = dict(
    num_context_tokens=4,
    num_experts=8,
    top_k=2,
    bottleneck_dim=16,
    router_hidden_dim=16,
    num_attention_heads=2,
    adapter_dropout=0.0,
)


def small_bank(**overrides) -> CKTAdapterBank:
    torch.manual_seed(0)
    return CKTAdapterBank(CKTConfig(teacher_layer="blocks.0", **{**SMALL, **overrides}), 20, 32)


@pytest.mark.parametrize("num_tokens", [1, 7, 50])
def test_absorbed_attention_matches_projected_values_and_gradients(num_tokens):
    torch.manual_seed(0)
    attention = LearnableQueryCrossAttention(64, num_queries=4, num_heads=4).double()
    with torch.no_grad():  # a non-zero value bias must pass through the pooling
        attention.to_v.bias.normal_()
    tokens = torch.randn(3, num_tokens, 64, dtype=torch.float64, requires_grad=True)
    params = [tokens, *attention.parameters()]

    def run(attend):
        out = attend(attention.to_q(attention.queries), tokens)
        return out, torch.autograd.grad(out.square().sum(), params, allow_unused=True)

    absorbed, absorbed_grads = run(attention._attend_absorbed)
    projected, projected_grads = run(attention._attend_projected)
    torch.testing.assert_close(absorbed, projected, rtol=1e-10, atol=1e-10)
    for a, p in zip(absorbed_grads, projected_grads):
        assert (a is None) == (p is None)  # the same parameters receive gradients (DDP needs that)
        if a is not None:
            torch.testing.assert_close(a, p, rtol=1e-9, atol=1e-10)


def test_absorbed_attention_is_chosen_where_it_saves_flops():
    paper = LearnableQueryCrossAttention(2048, num_queries=32, num_heads=8)  # d=2048, h*K=256
    assert paper.uses_absorbed_attention(256) and paper.uses_absorbed_attention(4096)
    assert not paper.uses_absorbed_attention(1)  # a single token: folding the queries costs more
    narrow = LearnableQueryCrossAttention(24, num_queries=32, num_heads=2)  # h*K=64 > d=24
    assert not narrow.uses_absorbed_attention(1000)


class _SyncCounter(TorchFunctionMode):
    """Counts tensor -> Python conversions (each one a host-device sync on an accelerator)."""

    SYNCING = {"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero", "bincount"}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.SYNCING:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("training", [False, True])
def test_bank_forward_has_exactly_one_host_sync(training):
    bank = small_bank().train(training)
    features = torch.randn(5, 6, 20)
    with _SyncCounter() as counter:
        context = bank(features)
        context.tokens.sum().backward()
    assert counter.calls == ["tolist"], counter.calls


def test_graph_breaks_without_and_with_capture_scalar_outputs():
    bank = small_bank(num_experts=4).eval()  # fewer experts: a shorter trace
    features = torch.randn(3, 6, 20)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_scalar_outputs=False):
        default = torch._dynamo.explain(bank)(features)
    # by default dynamo splits the graph at the one `.tolist()` (the group sizes) and still runs correctly
    assert default.graph_break_count >= 1
    assert all("capture_scalar_outputs" in str(reason.reason) for reason in default.break_reasons)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        captured = torch._dynamo.explain(bank)(features)
    assert captured.graph_break_count == 0, [str(reason.reason)[:200] for reason in captured.break_reasons]
    assert captured.graph_count == 1
    torch._dynamo.reset()


def _check_compiled_bank(backend: str) -> None:
    bank = small_bank(num_experts=4).eval()  # fewer experts: a shorter trace
    features = torch.randn(1, 6, 20)  # 1 sample x top-2 of 4 experts: 2 experts idle
    reference = bank(features, dense=True)
    eager = bank(features)
    eager.tokens.square().sum().backward()
    eager_grads = {name: p.grad.clone() for name, p in bank.named_parameters() if p.grad is not None}
    bank.zero_grad(set_to_none=True)
    idle = set(range(4)) - set(reference.topk_indices.flatten().tolist())
    assert len(idle) == 2

    ran = []
    for index, expert in enumerate(bank.specialized):
        expert.register_forward_hook(lambda module, args, out, index=index: ran.append((index, args[0].shape[0])))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        compiled = torch.compile(bank, fullgraph=True, backend=backend)
        context = compiled(features)
        context.tokens.square().sum().backward()
    torch._dynamo.reset()
    torch.testing.assert_close(context.tokens, reference.tokens, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(context.topk_indices, reference.topk_indices)
    for name, grad in eager_grads.items():
        # inductor fuses and reorders reductions: gradients agree to float32 rounding, not bit for bit
        torch.testing.assert_close(bank.get_parameter(name).grad, grad, rtol=1e-4, atol=1e-5)
    # Idle experts did no work: at most zero-row calls (their gradients are zero) instead of being skipped.
    for index in idle:
        for param in bank.specialized[index].parameters():
            assert param.grad is None or not param.grad.any()
    if backend == "eager":  # with AOT backends the hooks are traced into the graph, not called at run time
        assert ran and all(rows == 0 for index, rows in ran if index in idle)


def test_fullgraph_compile_is_exact_and_sparse_with_idle_experts():
    _check_compiled_bank("eager")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PEFT_CKT_SLOW_TESTS"), reason="inductor compile takes minutes on 2 cores")
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_fullgraph_compile_with_aot_backends(backend):
    _check_compiled_bank(backend)
