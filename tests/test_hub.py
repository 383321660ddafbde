"""Hub round trip with the real `huggingface_hub` client against the loopback test server (tests/hub_server.py).

`HF_ENDPOINT` is read when huggingface_hub is imported, so push and pull run in fresh subprocesses with the
environment set; the pull runs in a new process and must reproduce the pushed model's outputs exactly, then again
offline (`HF_HUB_OFFLINE=1`, server stopped) from the Hub cache. No test here touches the real Hub, except the
opt-in one marked `hub` (needs HF_TOKEN).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import yaml
from hub_server import HubTestServer
from safetensors.torch import load_file

STUDENT_ID = "peft-ckt-testing/tiny-cosmos-student"

COMMON = textwrap.dedent(
    f"""
    import json, sys, torch
    import peft_ckt
    from peft import PeftModel, get_peft_model
    from safetensors.torch import save_file
    from peft_ckt import CKTConfig
    from peft_ckt.testing import tiny_cosmos_inputs, tiny_cosmos_student, tiny_wan_inputs, tiny_wan_teacher

    def models():
        teacher, student = tiny_wan_teacher(), tiny_cosmos_student()
        student.register_to_config(_name_or_path="{STUDENT_ID}")  # as if loaded with from_pretrained
        return teacher, student

    def outputs(model):
        model.eval()
        with torch.no_grad():
            return model(**tiny_cosmos_inputs(2), teacher_inputs=tiny_wan_inputs(2)).sample
    """
)

PUSH = COMMON + textwrap.dedent(
    """
    repo, lora_repo, cli_repo, out = sys.argv[1:5]
    teacher, student = models()
    config = CKTConfig(teacher=teacher, teacher_layer="blocks.2", context_kwarg="encoder_hidden_states",
                       num_context_tokens=4, num_experts=4, top_k=2, bottleneck_dim=32, router_hidden_dim=32,
                       num_attention_heads=2)
    model = get_peft_model(student, config)
    # Move the weights away from their (seeded, reproducible) initialisation: only a real load reproduces them.
    torch.manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    save_file({"sample": outputs(model).contiguous()}, out + "/pushed.safetensors")
    info = model.push_to_hub(repo, commit_message="Add tiny CKT adapter")  # routed to peft_ckt.hub.push_to_hub
    print("COMMIT", info.oid)

    # Another PEFT method keeps transformers' push_to_hub: the routing is scoped to CKT adapters.
    from peft import LoraConfig
    lora = get_peft_model(tiny_cosmos_student(), LoraConfig(target_modules=["to_q"], r=2))
    lora.push_to_hub(lora_repo)

    # The CLI pushes a saved folder.
    model.save_pretrained(out + "/saved")
    from peft_ckt.commands import main
    assert main(["push", out + "/saved", cli_repo, "--preset", "tiny", "--base-model", "org/other-student",
                 "--tag", "libero"]) == 0
    """
)

PULL = COMMON + textwrap.dedent(
    """
    repo, out, name = sys.argv[1:4]
    teacher, student = models()
    model = PeftModel.from_pretrained(student, repo, teacher=teacher)
    save_file({"sample": outputs(model).contiguous()}, out + f"/{name}.safetensors")
    print("LOADED", type(model.peft_config["default"]).__name__)
    """
)


def run_python(code: str, args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    return proc


def card_metadata(readme: bytes) -> tuple[dict, str]:
    text = readme.decode()
    assert text.startswith("---\n")
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_push_and_pull_round_trip_through_the_hub(tmp_path):
    repo = f"ckt-tester/tiny-ckt-{uuid.uuid4().hex[:6]}"
    lora_repo, cli_repo = repo + "-lora", repo + "-cli"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    base_env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    with HubTestServer(lifetime_s=240) as hub:
        env = dict(base_env, HF_ENDPOINT=hub.endpoint, HF_TOKEN="hf_test_token")
        run_python(PUSH, [repo, lora_repo, cli_repo, str(tmp_path)], env)

        files = hub.files(repo)
        assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= files.keys()
        meta, body = card_metadata(files["README.md"])
        assert meta["library_name"] == "peft" and meta["base_model"] == STUDENT_ID
        assert {"peft", "ckt", "robotics", "world-action-model"} <= set(meta["tags"])
        assert meta["ckt"]["teacher_layer"] == "blocks.2" and meta["ckt"]["teacher_class"].endswith(
            "WanTransformer3DModel"
        )
        assert (meta["ckt"]["num_context_tokens"], meta["ckt"]["num_experts"], meta["ckt"]["top_k"]) == (4, 4, 2)
        assert 0 < meta["ckt"]["trainable_percent"] < 100
        assert "Teacher layer `l*` | `blocks.2`" in body and "Specialized adapters `M` / top-k | 4 / 2" in body
        assert f"{meta['ckt']['trainable_percent']:.4f}%" in body
        assert json.loads(files["adapter_config.json"])["peft_type"] == "CKT"

        lora_meta, _ = card_metadata(hub.files(lora_repo)["README.md"])
        assert "ckt" not in (lora_meta.get("tags") or [])  # transformers' card, untouched by the CKT route

        cli_meta, _ = card_metadata(hub.files(cli_repo)["README.md"])
        assert cli_meta["base_model"] == "org/other-student" and "libero" in cli_meta["tags"]
        # The CLI reloads the adapter frozen; its card still counts the adapter's parameters.
        assert cli_meta["ckt"]["trainable_parameters"] == meta["ckt"]["trainable_parameters"] > 0
        assert hub.files(cli_repo)["adapter_model.safetensors"] == files["adapter_model.safetensors"]

        # A fresh process pulls the adapter and reproduces the pushed model's outputs exactly.
        run_python(PULL, [repo, str(tmp_path), "pulled"], env)
        assert ("GET", f"/{repo}/resolve/main/adapter_model.safetensors") in hub.requests

    pushed = load_file(tmp_path / "pushed.safetensors")["sample"]
    assert load_file(tmp_path / "pulled.safetensors")["sample"].equal(pushed)

    # Offline, with the server gone: the Hub cache alone serves the adapter, without network retries.
    offline_env = dict(base_env, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    start = time.monotonic()
    run_python(PULL, [repo, str(tmp_path), "offline"], offline_env, timeout=120)
    assert time.monotonic() - start < 60
    assert load_file(tmp_path / "offline.safetensors")["sample"].equal(pushed)


def test_model_card_without_a_hub_id_for_the_student():
    import torch
    from peft import get_peft_model

    from peft_ckt import CKTConfig
    from peft_ckt.hub import build_model_card, is_ckt_model, resolve_base_model
    from peft_ckt.testing import tiny_cosmos_student, tiny_wan_teacher

    teacher = tiny_wan_teacher()
    config = CKTConfig(teacher=teacher, teacher_layer="blocks.1", num_context_tokens=2, num_experts=2, top_k=1)
    config.bottleneck_dim = config.router_hidden_dim = 8
    config.num_attention_heads = 2
    model = get_peft_model(tiny_cosmos_student(), config)
    assert is_ckt_model(model) and resolve_base_model(model) is None
    card = build_model_card(model, repo_id="me/x")
    assert card.data.library_name == "peft" and card.data.base_model is None
    assert "CosmosTransformer3DModel" in card.text and "an unnamed `" in card.text
    trainable, total = model.get_nb_trainable_parameters()
    assert card.data.ckt["trainable_parameters"] == trainable and trainable < total
    assert torch.is_tensor(next(model.parameters()))


@pytest.mark.hub
@pytest.mark.skipif(not os.environ.get("HF_TOKEN"), reason="needs HF_TOKEN (pushes to the real Hub)")
def test_real_hub_round_trip(tmp_path):  # pragma: no cover - opt-in
    from huggingface_hub import HfApi

    api = HfApi()
    repo = f"{api.whoami()['name']}/peft-ckt-test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"))
    try:
        run_python(
            PUSH.replace("lora.push_to_hub(lora_repo)", "pass"), [repo, repo, repo + "-cli", str(tmp_path)], env
        )
        run_python(PULL, [repo, str(tmp_path), "pulled"], env)
        pushed = load_file(tmp_path / "pushed.safetensors")["sample"]
        assert load_file(tmp_path / "pulled.safetensors")["sample"].equal(pushed)
    finally:
        for name in (repo, repo + "-cli"):
            api.delete_repo(name, missing_ok=True)


def test_card_counts_the_adapter_of_a_frozen_reloaded_model(tmp_path, capsys):
    # `peft-ckt push` reloads the adapter for inference (nothing requires grad): the card must still report what
    # `print_trainable_parameters()` of the trained model said, modules_to_save included.
    import torch
    from peft import PeftModel, get_peft_model

    from peft_ckt import CKTConfig
    from peft_ckt.hub import build_model_card
    from peft_ckt.testing import tiny_cosmos_student, tiny_wan_teacher

    torch.set_num_threads(1)
    teacher = tiny_wan_teacher()
    config = CKTConfig(
        teacher=teacher,
        teacher_layer="blocks.1",
        num_context_tokens=2,
        num_experts=2,
        top_k=1,
        bottleneck_dim=8,
        router_hidden_dim=8,
        num_attention_heads=2,
        modules_to_save=["proj_out"],
    )
    trained = get_peft_model(tiny_cosmos_student(), config)
    trainable, total = trained.get_nb_trainable_parameters()
    trained.print_trainable_parameters()
    printed = capsys.readouterr().out
    trained.save_pretrained(tmp_path)

    reloaded = PeftModel.from_pretrained(tiny_cosmos_student(), tmp_path, teacher=teacher)
    assert reloaded.get_nb_trainable_parameters()[0] == 0  # frozen for inference
    card = build_model_card(reloaded, repo_id="me/x")
    assert (card.data.ckt["trainable_parameters"], total) == (trainable, reloaded.get_nb_trainable_parameters()[1])
    assert f"trainable params: {trainable:,}" in printed
    assert f"trainable%: {card.data.ckt['trainable_percent']:.4f}" in printed
    assert f"{trainable:,} of {total:,}" in card.text
