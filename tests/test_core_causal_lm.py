"""CKT with transformers models: a tiny GPT-2 teacher and a tiny Llama causal-LM student (prepend, labels, generate)."""

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaForCausalLM

from peft_ckt import CKTConfig

K = 3
SMALL = dict(
    teacher_layer="h.1",
    target_modules="embed_tokens",
    injection="prepend",
    num_context_tokens=K,
    num_experts=4,
    top_k=2,
    bottleneck_dim=16,
    router_hidden_dim=16,
    num_attention_heads=2,
    adapter_dropout=0.0,
)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return GPT2Model(GPT2Config(vocab_size=50, n_positions=64, n_embd=48, n_layer=3, n_head=4)).eval()


def tiny_llama(seed=1):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=63,
    )
    return LlamaForCausalLM(config).eval()


def teacher_inputs(batch_size=2):
    return {"input_ids": torch.randint(0, 50, (batch_size, 5), generator=torch.Generator().manual_seed(5))}


def student_ids(batch_size=2, length=6):
    return torch.randint(2, 63, (batch_size, length), generator=torch.Generator().manual_seed(6))


def make_model(teacher, **overrides):
    torch.manual_seed(0)
    return get_peft_model(tiny_llama(), CKTConfig(teacher=teacher, **{**SMALL, **overrides})).eval()


@pytest.mark.parametrize("use_separator", [True, False])
def test_prepend_pads_labels_and_extends_mask(teacher, use_separator):
    model = make_model(teacher, use_separator=use_separator)
    ids = student_ids()
    count = 2 * K + int(use_separator)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids, teacher_inputs=teacher_inputs())
    assert out.logits.shape == (2, ids.shape[1] + count, 64)
    # the student's loss over the padded labels (context positions are -100), plus the weighted L_bal
    labels = torch.cat([torch.full((2, count), -100), ids], dim=1)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 64), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected + model.auxiliary_loss())
    assert model.auxiliary_loss().item() > 0


def test_append_with_inputs_embeds_kwarg(teacher):
    model = make_model(teacher, target_modules=None, context_kwarg="inputs_embeds", injection="append")
    ids = student_ids()
    embeds = model.get_base_model().get_input_embeddings()(ids)
    out = model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), labels=ids, teacher_inputs=teacher_inputs())
    assert out.logits.shape == (2, ids.shape[1] + 2 * K + 1, 64)
    assert torch.isfinite(out.loss)


def test_generate_adds_context_on_prefill_only_and_matches_full_recompute(teacher):
    model = make_model(teacher)
    ids = student_ids(length=4)
    lengths = []
    first_layer = model.get_base_model().model.layers[0]

    def record_length(module, args, kwargs):
        hidden_states = args[0] if args else kwargs["hidden_states"]
        lengths.append(hidden_states.shape[1])

    handle = first_layer.register_forward_pre_hook(record_length, with_kwargs=True)
    with torch.no_grad():
        generated = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            teacher_inputs=teacher_inputs(),
            max_new_tokens=4,
            do_sample=False,
        )
    handle.remove()
    count = 2 * K + 1
    assert lengths[0] == ids.shape[1] + count  # prefill: prompt + context
    assert all(length == 1 for length in lengths[1:])  # cached decoding: one new token, no context again
    # greedy decoding without a cache (context re-injected on every full forward) must agree
    sequence = ids
    context = model.encode_teacher(teacher_inputs())
    with torch.no_grad():
        for _ in range(4):
            logits = model(input_ids=sequence, attention_mask=torch.ones_like(sequence), ckt_context=context).logits
            sequence = torch.cat([sequence, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated[:, -4:], sequence[:, -4:])


def test_generate_with_disabled_adapter_equals_the_student(teacher):
    model = make_model(teacher)
    student = tiny_llama()
    ids = student_ids(length=4)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    with torch.no_grad(), model.disable_adapter():
        got = model.generate(input_ids=ids, **kwargs)
    assert torch.equal(got, student.generate(input_ids=ids, **kwargs))


def test_student_gradient_checkpointing_transformers(teacher):
    model = make_model(teacher)
    model.get_base_model().gradient_checkpointing_enable()
    model.train()
    ids = student_ids()
    model(input_ids=ids, labels=ids, teacher_inputs=teacher_inputs()).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "generalized" in n]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_prepend_logits_shape_against_the_unloaded_student(teacher):
    # The README states it: L + 2K + 1 positions with the context (first), L once unloaded; the last L line up.
    model = make_model(teacher)
    ids = student_ids()
    length = ids.shape[1]
    with_context = model(input_ids=ids, teacher_inputs=teacher_inputs()).logits
    assert with_context.shape == (2, length + 2 * K + 1, 64)
    student = model.unload()
    plain = student(input_ids=ids).logits
    assert plain.shape == (2, length, 64)
    assert with_context[:, -length:].shape == plain.shape
