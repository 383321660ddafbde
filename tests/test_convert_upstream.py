"""`peft-ckt convert-upstream`: a checkpoint of the authors' CKT-WAM code becomes a peft-ckt adapter that computes
the same context and injects it where theirs does.

The bank below is built in their layout from the documented parameter names and shapes (see peft_ckt.upstream):
a bottleneck MLP, `nn.MultiheadAttention` over learned `query_tokens`, a router `gate`, a `sep_token`.
"""

import json
import os
import re

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import load_file
from torch import nn

from peft_ckt.commands import main
from peft_ckt.testing import TinyWorldActionModel

torch.set_num_threads(1)

D_T, D_S, D_B, K, M, TOP_K, HIDDEN, HEADS = 40, 16, 12, 3, 4, 2, 10, 8


class UpstreamLayoutBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.down_proj = nn.Linear(D_T, D_B)
        self.up_proj = nn.Linear(D_B, D_S)
        self.layer_norm = nn.LayerNorm(D_S)
        self.dropout = nn.Dropout(0.1)
        self.query_tokens = nn.Parameter(torch.zeros(1, K, D_S))
        self.cross_attn = nn.MultiheadAttention(D_S, HEADS, dropout=0.1, batch_first=True)
        self.post_attn_norm = nn.LayerNorm(D_S)

    def forward(self, features):  # [B, N, d_t] -> [B, K, d_s]
        hidden = self.dropout(self.layer_norm(self.up_proj(F.gelu(self.down_proj(features)))))
        queries = self.query_tokens.expand(features.shape[0], -1, -1)
        attended, _ = self.cross_attn(queries, hidden, hidden)
        return self.post_attn_norm(attended + queries)


class UpstreamLayoutRouter(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(D_T, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, M))
        self.noise_weight = nn.Parameter(torch.zeros(1))


class UpstreamLayoutBank(nn.Module):
    def __init__(self):
        super().__init__()
        self.generalized_adapter = UpstreamLayoutBranch()
        self.specialized_adapters = nn.ModuleList(UpstreamLayoutBranch() for _ in range(M))
        self.router = UpstreamLayoutRouter()
        self.sep_token = nn.Parameter(torch.zeros(1, 1, D_S))

    def reference_context(self, features):
        """Eval-mode `C_A [B, 2K, d_s]` and router probabilities: every expert runs, top-k gathered, renormalised."""
        general = self.generalized_adapter(features)
        every = torch.stack([expert(features) for expert in self.specialized_adapters], dim=1)
        probs = self.router.gate(features.mean(1)).softmax(-1)
        weights, indices = probs.topk(TOP_K, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        picked = every.gather(1, indices[:, :, None, None].expand(-1, -1, K, D_S))
        return torch.cat([general, (picked * weights[:, :, None, None]).sum(1)], dim=1), probs


def upstream_checkpoint(path, student_trainable=None, seed=0):
    torch.manual_seed(seed)
    bank = UpstreamLayoutBank()
    with torch.no_grad():  # every tensor random (norms and biases too), so that any mis-mapping shows
        for parameter in bank.parameters():
            parameter.normal_(0.0, 0.4)
        for branch in [bank.generalized_adapter, *bank.specialized_adapters]:
            for norm in (branch.layer_norm, branch.post_attn_norm):
                norm.weight.add_(1.0)
    optimizer = torch.optim.AdamW(bank.parameters(), lr=3e-4, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    config = {  # their TrainConfig, as asdict() writes it
        "teacher_hidden_dim": D_T,
        "student_hidden_dim": D_S,
        "teacher_block_index": 1,
        "adapter_bottleneck_dim": D_B,
        "adapter_dropout": 0.1,
        "num_adapter_output_tokens": K,
        "num_specialized_experts": M,
        "top_k": TOP_K,
        "gating_hidden_dim": HIDDEN,
        "adapter_lr": 3e-4,
        "load_balance_weight": 0.02,
        "use_middle_layer": True,
        "resume_from": None,
    }
    torch.save(
        {
            "iteration": 5000,
            "adapter_bank": bank.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "config": config,
            "student_trainable": student_trainable or {},
        },
        path,
    )
    return bank.eval()


def teacher_and_inputs():
    torch.manual_seed(1)
    teacher = TinyWorldActionModel(obs_dim=20, text_dim=6, width=D_T, num_blocks=2).eval()
    generator = torch.Generator().manual_seed(2)
    teacher_inputs = {
        "observation": torch.randn(3, 5, 20, generator=generator),
        "text_embeds": torch.randn(3, 4, 6, generator=generator),
    }
    student_inputs = {
        "observation": torch.randn(3, 5, 12, generator=generator),
        "text_embeds": torch.randn(3, 4, 10, generator=generator),
    }
    return teacher, teacher_inputs, student_inputs


def student():
    torch.manual_seed(3)
    return TinyWorldActionModel(width=D_S).eval()


def convert(tmp_path, *extra, student="org/student", route=("--target-modules", "text_proj")):
    argv = ["convert-upstream", str(tmp_path / "checkpoint_00005000.pt"), str(tmp_path / "adapter")]
    argv += ["--teacher", "org/teacher", "--student", student, *route, *extra]
    return main(argv)


def convert_error(tmp_path, capsys, *extra, **kwargs) -> str:
    """The one-line error of a conversion that must fail as a usage error (exit status 2, like argparse's)."""
    with pytest.raises(SystemExit) as exit_info:
        convert(tmp_path, *extra, **kwargs)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("peft-ckt convert-upstream: error: "), err
    return err


def test_converted_checkpoint_gives_the_same_context_and_injection(tmp_path, capsys):
    upstream = upstream_checkpoint(tmp_path / "checkpoint_00005000.pt")
    assert convert(tmp_path) == 0
    assert "student_trainable" not in capsys.readouterr().err  # nothing to warn about
    adapter = tmp_path / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["peft_type"] == "CKT" and saved["teacher"] == "org/teacher"
    assert saved["base_model_name_or_path"] == "org/student" and saved["teacher_layer"] == "blocks.1"
    expected_sizes = dict(teacher_hidden_size=D_T, student_hidden_size=D_S, bottleneck_dim=D_B, num_context_tokens=K)
    expected_sizes.update(num_experts=M, top_k=TOP_K, router_hidden_dim=HIDDEN, num_attention_heads=HEADS)
    expected_sizes.update(adapter_dropout=0.1, attention_dropout=0.1, load_balance_weight=0.02, injection="append")
    assert {key: saved[key] for key in expected_sizes} == expected_sizes
    converted = load_file(adapter / "adapter_model.safetensors")
    assert all(key.startswith("base_model.model.ckt.ckt_bank.") for key in converted)
    # Their key bias (random here) cancels in the softmax: dropped, and the context below is still theirs.
    assert not any(key.endswith("to_k.bias") for key in converted)

    teacher, teacher_inputs, student_inputs = teacher_and_inputs()
    model = PeftModel.from_pretrained(student(), str(adapter), teacher=teacher).eval()
    captured = {}
    hook = teacher.blocks[1].register_forward_hook(lambda module, args, output: captured.update(h=output))
    with torch.no_grad():
        context = model.encode_teacher(teacher_inputs)
        hook.remove()
        reference, probs = upstream.reference_context(captured["h"])
        separator = upstream.sep_token.expand(3, 1, D_S)
        torch.testing.assert_close(context.tokens, torch.cat([separator, reference], dim=1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(context.router_probs, probs, rtol=1e-5, atol=1e-6)

        # Their injection: the student's text embedding E_t becomes [E_t ; <SEP> ; C_A].
        frames, actions = model(**student_inputs, ckt_context=context)
        plain = student()
        plain.text_proj.register_forward_hook(
            lambda module, args, output: torch.cat([output, separator, reference], dim=1)
        )
        expected_frames, expected_actions = plain(**student_inputs)
    torch.testing.assert_close(frames, expected_frames, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actions, expected_actions, rtol=1e-5, atol=1e-5)


def test_student_trainable_tensors_warn_loudly_and_are_written_on_request(tmp_path, capsys):
    student_weights = {"net.blocks.0.weight": torch.randn(4, 4), "net.final.bias": torch.randn(4)}
    upstream_checkpoint(tmp_path / "checkpoint_00005000.pt", student_trainable=student_weights)
    assert convert(tmp_path) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "2 student tensors" in err and "--write-student-trainable" in err
    assert not (tmp_path / "adapter" / "student_trainable.safetensors").exists()

    assert convert(tmp_path, "--write-student-trainable") == 0
    assert "student_trainable.safetensors" in capsys.readouterr().err
    written = load_file(tmp_path / "adapter" / "student_trainable.safetensors")
    assert written.keys() == student_weights.keys()
    for key, value in student_weights.items():
        assert torch.equal(written[key], value)


class NotATensor:
    """Any pickled object outside torch's allow-list."""


def test_refuses_pickled_objects_and_foreign_files(tmp_path, capsys):
    path = tmp_path / "checkpoint_00005000.pt"
    torch.save({"adapter_bank": {}, "config": NotATensor()}, path)
    assert "Refusing to load" in convert_error(tmp_path, capsys)
    torch.save({"model": {"weight": torch.zeros(2)}}, path)
    assert "not a CKT-WAM checkpoint" in convert_error(tmp_path, capsys)
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda path: None, r"was not found: no such checkpoint file"),
        (lambda path: path.write_text("just some notes\n"), r"is a text file, not a CKT-WAM checkpoint"),
        (lambda path: path.write_bytes(b""), r"is empty"),
        ("truncated", r"is a truncated or corrupt torch checkpoint"),
    ],
)
def test_unreadable_checkpoints_are_named_for_what_they_are(tmp_path, capsys, make, message):
    path = tmp_path / "checkpoint_00005000.pt"
    if make == "truncated":
        upstream_checkpoint(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        make(path)
    error = convert_error(tmp_path, capsys)
    assert re.search(message, error) and str(path) in error, error
    assert "holds more than tensors" not in error
    assert not (tmp_path / "adapter").exists()


def test_output_path_that_is_a_file_is_one_clear_error(tmp_path, capsys):
    upstream_checkpoint(tmp_path / "checkpoint_00005000.pt")
    (tmp_path / "adapter").write_text("x")
    error = convert_error(tmp_path, capsys)
    assert re.search(r"error: output_dir '.*adapter' is a file, not a folder", error), error
    assert (tmp_path / "adapter").read_text() == "x"


def tiny_cosmos_folder(folder, text_embed_dim):
    """A saved Cosmos student's config.json (all the check reads) with conditioning width `text_embed_dim`."""
    from peft_ckt.testing import tiny_cosmos_student

    tiny_cosmos_student(num_layers=1).save_config(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "text_embed_dim": text_embed_dim}))
    return folder


def test_student_is_checked_before_anything_is_written(tmp_path, capsys):
    upstream_checkpoint(tmp_path / "checkpoint_00005000.pt")
    missing = tmp_path / "no_student"
    error = convert_error(tmp_path, capsys, student=str(missing))
    assert f"error: --student '{missing}' was not found: no such folder, and not a Hub id" in error
    (tmp_path / "weights.pt").write_text("x")
    assert "is a file, not a model folder" in convert_error(tmp_path, capsys, student=str(tmp_path / "weights.pt"))
    (tmp_path / "empty").mkdir()
    assert "folder without a config.json" in convert_error(tmp_path, capsys, student=str(tmp_path / "empty"))

    # A student of another width than the checkpoint's d_s=16, through the conditioning kwarg or a module.
    wide = tiny_cosmos_folder(tmp_path / "wide", text_embed_dim=24)
    kwarg = ("--context-kwarg", "encoder_hidden_states")
    error = convert_error(tmp_path, capsys, student=str(wide), route=kwarg)
    assert re.search(r"--student '.*wide' has conditioning width 24 at .*encoder_hidden_states.*d_s=16", error), error
    error = convert_error(tmp_path, capsys, student=str(wide), route=("--target-modules", "text_proj"))
    assert "--target-modules does not fit the student" in error and "text_proj" in error
    assert not (tmp_path / "adapter").exists()

    # The right width converts.
    fitting = tiny_cosmos_folder(tmp_path / "fitting", text_embed_dim=D_S)
    assert convert(tmp_path, student=str(fitting), route=kwarg) == 0
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(fitting)


@pytest.mark.parametrize("failing_rename", [1, 2])
def test_output_folder_is_replaced_all_or_nothing(tmp_path, capsys, monkeypatch, failing_rename):
    upstream_checkpoint(tmp_path / "checkpoint_00005000.pt", seed=0)
    assert convert(tmp_path) == 0
    adapter = tmp_path / "adapter"
    (adapter / "README.md").write_text("notes")  # not the converter's: kept
    before = {path.name: path.read_bytes() for path in adapter.iterdir()}
    upstream_checkpoint(tmp_path / "checkpoint_00005000.pt", seed=1)  # other weights
    capsys.readouterr()

    replace, calls = os.replace, []

    def failing_replace(source, target):  # the disk fills up half-way through putting the output in place
        calls.append(target)
        if len(calls) == failing_rename:
            raise OSError(28, "No space left on device (simulated)")
        return replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    error = convert_error(tmp_path, capsys)
    monkeypatch.setattr(os, "replace", replace)
    assert f"output_dir '{adapter}' could not be written" in error and "No space left" in error
    assert {path.name: path.read_bytes() for path in adapter.iterdir()} == before  # the older folder, whole
    assert sorted(path.name for path in tmp_path.iterdir()) == ["adapter", "checkpoint_00005000.pt"]  # no debris

    assert convert(tmp_path) == 0
    after = {path.name: path.read_bytes() for path in adapter.iterdir()}
    assert after.keys() == before.keys() and after["README.md"] == b"notes"
    assert after["adapter_model.safetensors"] != before["adapter_model.safetensors"]
