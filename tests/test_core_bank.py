"""The adapter bank on its own: sparse experts, router, load balancing, parameter count at the paper's widths, the
key projection without a bias (and adapters saved with one)."""

import contextlib
import io
import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

from peft_ckt import CKTAdapterBank, CKTConfig
from peft_ckt.layer import LearnableQueryCrossAttention, load_balance_loss
from peft_ckt.testing import TinyWorldActionModel

SMALL = dict(
    num_context_tokens=4, num_experts=6, top_k=2, bottleneck_dim=16, router_hidden_dim=16, num_attention_heads=2
)


def small_bank(**overrides) -> CKTAdapterBank:
    torch.manual_seed(0)
    config = CKTConfig(teacher_layer="blocks.0", **{**SMALL, **overrides})
    return CKTAdapterBank(config, teacher_hidden_size=20, student_hidden_size=12)


def test_sparse_dispatch_matches_dense_reference():
    bank = small_bank(adapter_dropout=0.0).eval()
    features = torch.randn(7, 5, 20)
    sparse, dense = bank(features), bank(features, dense=True)
    torch.testing.assert_close(sparse.tokens, dense.tokens, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sparse.topk_indices, dense.topk_indices)


def test_unselected_experts_never_run_and_selected_see_only_their_samples():
    bank = small_bank().eval()
    seen = {index: [] for index in range(len(bank.specialized))}
    for index, expert in enumerate(bank.specialized):
        expert.register_forward_hook(lambda m, args, out, index=index: seen[index].append(args[0].shape[0]))
    features = torch.randn(5, 3, 20)
    context = bank(features)
    routed = torch.bincount(context.topk_indices.flatten(), minlength=len(bank.specialized)).tolist()
    for index, count in enumerate(routed):
        # each expert runs at most once per forward, on exactly the samples routed to it
        assert seen[index] == ([count] if count else []), (index, seen[index], count)
    assert sum(routed) == 5 * 2
    # with fewer samples than experts, some experts are necessarily idle
    assert any(count == 0 for count in routed)


def test_context_tokens_layout_and_router_outputs():
    bank = small_bank().eval()
    context = bank(torch.randn(3, 9, 20))
    assert context.tokens.shape == (3, 2 * 4 + 1, 12)  # 2K + <SEP>
    assert context.router_probs.dtype == torch.float32
    torch.testing.assert_close(context.router_probs.sum(-1), torch.ones(3))
    torch.testing.assert_close(context.topk_weights.sum(-1), torch.ones(3))
    # append puts <SEP> first (right after E_t), prepend puts it last (right before E_t)
    torch.testing.assert_close(context.tokens[:, 0], bank.separator.expand(3, -1))
    prepend = small_bank(injection="prepend").eval()
    torch.testing.assert_close(prepend(torch.randn(3, 9, 20)).tokens[:, -1], prepend.separator.expand(3, -1))
    assert small_bank(use_separator=False)(torch.randn(2, 4, 20)).tokens.shape == (2, 8, 12)


def test_load_balance_loss_is_one_for_uniform_routing_and_larger_when_skewed():
    num_experts = 8
    uniform = torch.full((16, num_experts), 1 / num_experts)
    top1 = torch.arange(16)[:, None] % num_experts
    assert load_balance_loss(uniform, top1).item() == pytest.approx(1.0)
    # even with every sample on one expert, uniform probabilities give 1 (f sums to 1)
    assert load_balance_loss(uniform, torch.zeros(16, 1, dtype=torch.long)).item() == pytest.approx(1.0)
    skewed = torch.zeros(16, num_experts)
    skewed[:, 0] = 1.0
    assert load_balance_loss(skewed, torch.zeros(16, 1, dtype=torch.long)).item() == pytest.approx(num_experts)


def test_router_noise_only_in_training_with_learned_scale():
    bank = small_bank()
    features = torch.randn(4, 3, 20)
    bank.train()
    with torch.no_grad():
        bank.router.noise_scale.fill_(3.0)
    torch.manual_seed(1)
    noisy_a = bank.router(features)[0]
    torch.manual_seed(2)
    noisy_b = bank.router(features)[0]
    assert not torch.allclose(noisy_a, noisy_b)
    bank.eval()
    torch.testing.assert_close(bank.router(features)[0], bank.router(features)[0])
    # the scale is learned: it receives a gradient in training
    bank.train()
    bank(features).load_balance_loss.backward()
    assert bank.router.noise_scale.grad is not None


class _WideTeacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(5120, 5120) for _ in range(2))


class _WideStudent(nn.Module):
    """A conditioning-width-2048 student (its single layer stands in for a 2B model; only the bank is counted)."""

    def __init__(self):
        super().__init__()
        self.cross = nn.Linear(2048, 2048)

    def forward(self, hidden_states, encoder_hidden_states):
        return hidden_states + self.cross(encoder_hidden_states).mean(1, keepdim=True)


def test_trainable_parameters_at_paper_widths():
    with torch.device("meta"):  # the count needs shapes only
        teacher, student = _WideTeacher(), _WideStudent()
        config = CKTConfig(teacher=teacher, teacher_layer="blocks.1", student_hidden_size=2048)
        model = get_peft_model(student, config)
    trainable, _ = model.get_nb_trainable_parameters()
    assert abs(trainable - 187.4e6) / 187.4e6 < 0.01, trainable
    assert model.get_bank().teacher_hidden_size == 5120 and model.get_bank().student_hidden_size == 2048
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        model.print_trainable_parameters()
    assert f"trainable params: {trainable:,}" in printed.getvalue()
    assert printed.getvalue().startswith("trainable params: 187,")


# --------------------------------------------------------------------------------------------- key bias
def test_key_projection_has_no_bias():
    bank = small_bank()
    attentions = [m for m in bank.modules() if isinstance(m, LearnableQueryCrossAttention)]
    assert len(attentions) == 1 + SMALL["num_experts"]
    assert all(attention.to_k.bias is None for attention in attentions)
    assert not any(key.endswith("to_k.bias") for key in bank.state_dict())


def _with_key_bias(model: nn.Module, biases: dict[str, torch.Tensor]) -> None:
    """What the bank computed while its key projection had a bias: that bias put back, the projected form forced
    (it applies `to_k` to every token, bias included)."""
    for name, module in model.named_modules():
        if isinstance(module, LearnableQueryCrossAttention):
            hidden = module.to_k.in_features
            biased = nn.Linear(hidden, hidden)
            with torch.no_grad():
                biased.weight.copy_(module.to_k.weight)
                biased.bias.copy_(biases[name])
            module.to_k = biased
            module.uses_absorbed_attention = lambda num_tokens: False


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_adapter_saved_with_a_key_bias_loads_with_the_same_outputs(tmp_path, low_cpu_mem_usage):
    torch.manual_seed(0)
    teacher = TinyWorldActionModel(obs_dim=20, text_dim=6, width=24, num_blocks=2).eval()
    config = CKTConfig(teacher=teacher, teacher_layer="blocks.1", target_modules="text_proj", **SMALL)
    torch.manual_seed(1)
    model = get_peft_model(TinyWorldActionModel(), config).eval()
    model.save_pretrained(tmp_path)
    # The file as written while the key projection had a bias: one per branch, far from zero.
    weights_file = tmp_path / "adapter_model.safetensors"
    tensors = load_file(weights_file)
    weight_keys = [key for key in tensors if key.endswith("cross_attention.to_k.weight")]
    assert len(weight_keys) == 1 + SMALL["num_experts"]
    generator = torch.Generator().manual_seed(5)
    for key in weight_keys:
        tensors[key.replace(".weight", ".bias")] = 3.0 * torch.randn(tensors[key].shape[0], generator=generator)
    save_file(tensors, weights_file, metadata={"format": "pt"})

    torch.manual_seed(1)  # the same student
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reloaded = PeftModel.from_pretrained(
            TinyWorldActionModel(), tmp_path, teacher=teacher, low_cpu_mem_usage=low_cpu_mem_usage
        ).eval()
    assert not [w for w in caught if "to_k" in str(w.message)]  # the dropped tensor is not reported unexpected
    assert not any(key.endswith("to_k.bias") for key in reloaded.state_dict())

    torch.manual_seed(1)
    old = PeftModel.from_pretrained(TinyWorldActionModel(), tmp_path, teacher=teacher).eval()
    prefix = "base_model.model."
    biases = {
        key[len(prefix) :].replace(".to_k.bias", "").replace(".ckt_bank.", ".ckt_bank.default."): tensors[key]
        for key in tensors
        if key.endswith("to_k.bias")
    }
    _with_key_bias(old.base_model.model, biases)
    teacher_inputs = {"observation": torch.randn(3, 5, 20), "text_embeds": torch.randn(3, 4, 6)}
    student_inputs = {"observation": torch.randn(3, 5, 12), "text_embeds": torch.randn(3, 4, 10)}
    with torch.no_grad():
        context, expected = reloaded.encode_teacher(teacher_inputs), old.encode_teacher(teacher_inputs)
        frames, _ = reloaded(**student_inputs, ckt_context=context)
        expected_frames, _ = old(**student_inputs, ckt_context=expected)
    torch.testing.assert_close(context.tokens, expected.tokens, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(frames, expected_frames, rtol=1e-5, atol=1e-6)
    # The bank's own strict load takes such a state dict too (the old bank's, key biases included).
    old_state = old.get_bank().state_dict()
    assert sum(key.endswith("to_k.bias") for key in old_state) == len(weight_keys)
    reloaded.get_bank().load_state_dict(old_state, strict=True)
