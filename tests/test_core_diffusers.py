"""CKT on the paper's pairing at toy size: a diffusers Wan teacher and a diffusers Cosmos student (real models)."""

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from peft_ckt import CKTConfig
from peft_ckt.testing import tiny_cosmos_inputs, tiny_cosmos_student, tiny_wan_inputs, tiny_wan_teacher

pytest.importorskip("diffusers")

K = 4
SMALL = dict(
    teacher_layer="blocks.1",
    num_context_tokens=K,
    num_experts=4,
    top_k=2,
    bottleneck_dim=16,
    router_hidden_dim=16,
    num_attention_heads=2,
)


def make_model(teacher, adapter_name="default", seed=0, **overrides):
    student = tiny_cosmos_student()
    torch.manual_seed(seed)
    return get_peft_model(student, CKTConfig(teacher=teacher, **{**SMALL, **overrides}), adapter_name=adapter_name)


def run(model, batch_size=2, **extra):
    return model(**tiny_cosmos_inputs(batch_size), teacher_inputs=tiny_wan_inputs(batch_size), **extra).sample


def conditioning_lengths(model):
    """Records the length of the sequence the student's first cross-attention attends over."""
    lengths = []
    to_k = model.get_base_model().transformer_blocks[0].attn2.to_k
    to_k.register_forward_hook(lambda m, args, out: lengths.append(args[0].shape[1]))
    return lengths


def test_context_is_appended_with_separator(teacher):
    model = make_model(teacher).eval()
    lengths = conditioning_lengths(model)
    out = run(model)
    text_length = tiny_cosmos_inputs()["encoder_hidden_states"].shape[1]
    assert lengths == [text_length + 1 + 2 * K]
    assert out.shape == tiny_cosmos_inputs()["hidden_states"].shape and torch.isfinite(out).all()
    model_no_sep = make_model(teacher, use_separator=False).eval()
    lengths = conditioning_lengths(model_no_sep)
    run(model_no_sep)
    assert lengths == [text_length + 2 * K]


def test_later_teacher_blocks_never_run(teacher):
    model = make_model(teacher)
    calls = {name: 0 for name in ("blocks.0", "blocks.1", "blocks.2", "blocks.3", "proj_out")}
    handles = [
        teacher.get_submodule(name).register_forward_hook(
            lambda *a, name=name: calls.__setitem__(name, calls[name] + 1)
        )
        for name in calls
    ]
    try:
        run(model)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"blocks.0": 1, "blocks.1": 1, "blocks.2": 0, "blocks.3": 0, "proj_out": 0}
    # the teacher is frozen, outside the peft module tree, and untouched by autograd
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p is not q for p in teacher.parameters() for q in list(model.parameters())[:3])
    assert not any(m is teacher for m in model.modules())


def test_disable_adapter_is_bit_identical_and_needs_no_teacher(teacher):
    student = tiny_cosmos_student()
    inputs = tiny_cosmos_inputs()
    with torch.no_grad():
        expected = copy.deepcopy(student)(**inputs).sample
    model = get_peft_model(student, CKTConfig(teacher=teacher, **SMALL)).eval()
    with torch.no_grad():
        with model.disable_adapter():
            assert torch.equal(model(**inputs).sample, expected)
            # CKT kwargs are dropped, never passed to the student
            assert torch.equal(model(**inputs, teacher_inputs=tiny_wan_inputs()).sample, expected)
        assert not torch.equal(model(**inputs, teacher_inputs=tiny_wan_inputs()).sample, expected)


def test_reused_context_equals_one_call_path(teacher):
    model = make_model(teacher).eval()
    inputs, teacher_inputs = tiny_cosmos_inputs(), tiny_wan_inputs()
    with torch.no_grad():
        one_call = model(**inputs, teacher_inputs=teacher_inputs).sample
        context = model.encode_teacher(teacher_inputs)
        calls = []
        teacher.blocks[0].register_forward_hook(lambda *a: calls.append(1))
        for step in range(3):  # e.g. denoising steps: the teacher does not run again
            step_inputs = {**inputs, "timestep": inputs["timestep"] * (step + 1) / 3}
            reused = model(**step_inputs, ckt_context=context).sample
            if step == 2:
                torch.testing.assert_close(reused, one_call)
    assert calls == []
    teacher.blocks[0]._forward_hooks.clear()


def test_training_step_changes_only_adapter_weights_and_adds_aux_loss(teacher):
    model = make_model(teacher)
    model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = run(model)
    aux = model.auxiliary_loss()
    assert aux.requires_grad and aux.item() > 0
    loss = out.pow(2).mean() + aux
    loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed, "nothing was trained"
    assert all(".ckt.ckt_bank.default." in name for name in changed), changed
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all("ckt_" in name for name in trainable)
    # sparse experts: only the experts used in this batch received gradients... plus everything always-on
    assert any("generalized" in name for name in changed) and any("router" in name for name in changed)


def test_save_and_load_in_fresh_process_gives_identical_outputs(teacher, tmp_path):
    model = make_model(teacher)
    # train a little so the saved weights differ from a fresh init
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    run(model).pow(2).mean().backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        expected = run(model)
    adapter_dir, teacher_dir = tmp_path / "adapter", tmp_path / "teacher"
    teacher.save_pretrained(teacher_dir)
    model.peft_config["default"].teacher = str(teacher_dir)  # the reference a Hub/local teacher would carry
    model.save_pretrained(adapter_dir)
    torch.save(expected, tmp_path / "expected.pt")

    files = sorted(os.listdir(adapter_dir))
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    keys = load_file(adapter_dir / "adapter_model.safetensors").keys()
    assert keys and all(any(part.startswith("ckt_") for part in key.split(".")) for key in keys)
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert saved["peft_type"] == "CKT" and saved["teacher"] == str(teacher_dir)
    assert saved["teacher_class"].endswith("WanTransformer3DModel")
    assert saved["teacher_hidden_size"] == 32 and saved["student_hidden_size"] == 24

    script = textwrap.dedent(
        f"""
        import torch, peft_ckt
        from peft import PeftModel
        from peft_ckt.testing import tiny_cosmos_inputs, tiny_cosmos_student, tiny_wan_inputs
        # no teacher= : the stored teacher reference is loaded through its class
        model = PeftModel.from_pretrained(tiny_cosmos_student(), {str(adapter_dir)!r}).eval()
        assert model.peft_config["default"].teacher_module is None  # loaded lazily, on first use
        with torch.no_grad():
            out = model(**tiny_cosmos_inputs(2), teacher_inputs=tiny_wan_inputs(2)).sample
        torch.testing.assert_close(out, torch.load({str(tmp_path / "expected.pt")!r}), rtol=0, atol=0)
        assert model.peft_config["default"].teacher_module is not None
        assert model.peft_config["default"].teacher == {str(teacher_dir)!r}
        print("IDENTICAL")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "IDENTICAL" in result.stdout, result.stderr[-3000:]

    # in-process, with the teacher passed explicitly (it wins over the stored reference)
    loaded = PeftModel.from_pretrained(tiny_cosmos_student(), adapter_dir, teacher=teacher).eval()
    assert loaded.peft_config["default"].teacher_module is teacher
    with torch.no_grad():
        assert torch.equal(run(loaded), expected)


def test_adapter_name_makes_no_difference(teacher):
    outputs = []
    for name in ("default", "my-adapter"):
        model = make_model(teacher, adapter_name=name, seed=123).eval()
        with torch.no_grad():
            outputs.append(run(model))
    assert torch.equal(outputs[0], outputs[1])


def test_several_adapters_switch_and_delete(teacher, tmp_path):
    model = make_model(teacher, seed=0).eval()
    torch.manual_seed(1)
    model.add_adapter("second", CKTConfig(teacher=teacher, **SMALL))
    with torch.no_grad():
        first = run(model)
        model.set_adapter("second")
        second = run(model)
        assert not torch.equal(first, second)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {
            n for n, _ in model.named_parameters() if ".ckt_bank.second." in n
        }
        model.set_adapter("default")
        assert torch.equal(run(model), first)
    model.save_pretrained(tmp_path)  # every adapter is saved, the extra ones in subfolders
    assert (tmp_path / "second" / "adapter_model.safetensors").exists()
    model.delete_adapter("second")
    assert "second" not in model.peft_config
    assert not any(".second." in name for name, _ in model.named_parameters())
    with torch.no_grad():
        assert torch.equal(run(model), first)


def test_bf16_forward_is_finite_with_teacher_in_its_own_dtype():
    teacher = tiny_wan_teacher().to(torch.bfloat16)  # the teacher keeps its own dtype
    model = get_peft_model(tiny_cosmos_student().to(torch.bfloat16), CKTConfig(teacher=teacher, **SMALL)).eval()
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tiny_cosmos_inputs().items()}
    with torch.no_grad():
        out = model(**inputs, teacher_inputs=tiny_wan_inputs()).sample
        context = model.encode_teacher(tiny_wan_inputs())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert context.router_probs.dtype == torch.float32 and torch.isfinite(context.tokens).all()


def test_student_gradient_checkpointing(teacher):
    model = make_model(teacher, adapter_dropout=0.0)
    model.get_base_model().enable_gradient_checkpointing()
    model.train()
    run(model).pow(2).mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if "generalized" in n and p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_two_models_can_share_one_teacher(teacher):
    first, second = make_model(teacher, seed=0).eval(), make_model(teacher, seed=1).eval()
    with torch.no_grad():
        a, b = run(first), run(second)
        assert torch.equal(run(first), a)
    assert not torch.equal(a, b)
    assert not teacher.blocks[1]._forward_hooks  # capture hooks are per call
