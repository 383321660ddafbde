"""A downloaded file must not decide what code runs: an adapter's teacher reference and a policy folder's class path
are imported only from trusted packages, and teacher weights are read from safetensors only, unless the user opts
in (`trust_remote_code=True`)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from hub_server import HubTestServer
from peft import PeftModel, get_peft_model

import peft_ckt  # noqa: F401  (registers CKT)
from peft_ckt import CKTConfig
from peft_ckt.libero.policies import LiberoPolicy, check_policy_spec, load_policy, register_policy
from peft_ckt.teacher import TRUSTED_TEACHERS_ENV, is_trusted_teacher_class, load_teacher
from peft_ckt.testing import TINY_CKT_KWARGS, tiny_cosmos_inputs, tiny_cosmos_student, tiny_wan_inputs

torch.set_num_threads(1)

SMALL = TINY_CKT_KWARGS

# A module outside the trusted packages that leaves a mark when it is imported.
UNTRUSTED_TEACHER = """
import pathlib
pathlib.Path(__file__).with_suffix(".imported").write_text("imported")
from diffusers import WanTransformer3DModel

class UntrustedWan(WanTransformer3DModel):
    pass
"""

UNTRUSTED_POLICY = """
import pathlib
pathlib.Path(__file__).with_suffix(".imported").write_text("imported")
import numpy as np

class UntrustedPolicy:
    @classmethod
    def from_pretrained(cls, path):
        return cls()

    def reset(self):
        pass

    def select_action(self, observation):
        return np.zeros(7, dtype=np.float32)
"""


def write_module(folder: Path, source: str, monkeypatch) -> tuple[str, Path]:
    """Writes a uniquely named module on sys.path; returns its name and the file it writes when imported."""
    name = f"ckt_untrusted_{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    return name, folder / f"{name}.imported"


def run(model: PeftModel) -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_cosmos_inputs(2), teacher_inputs=tiny_wan_inputs(2)).sample


def saved_adapter(teacher, folder: Path, teacher_dir: Path, teacher_class: str | None = None) -> Path:
    model = get_peft_model(tiny_cosmos_student(), CKTConfig(teacher=teacher, **SMALL))
    model.peft_config["default"].teacher = str(teacher_dir)  # the reference a Hub/local teacher would carry
    model.save_pretrained(folder)
    if teacher_class:
        path = folder / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "teacher_class": teacher_class}))
    return folder


# --------------------------------------------------------------------------------------------- teacher class
@pytest.mark.filterwarnings("ignore:Unexpected keyword arguments")  # peft ignores the key the file adds
def test_untrusted_teacher_class_is_not_imported_without_opt_in(teacher, tmp_path, monkeypatch):
    module, marker = write_module(tmp_path / "mods", UNTRUSTED_TEACHER, monkeypatch)
    teacher.save_pretrained(tmp_path / "teacher")
    adapter = saved_adapter(teacher, tmp_path / "adapter", tmp_path / "teacher", f"{module}.UntrustedWan")
    # A file cannot opt in for the user.
    config_path = adapter / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "trust_remote_code": True}))

    model = PeftModel.from_pretrained(tiny_cosmos_student(), str(adapter)).eval()
    assert model.peft_config["default"].trust_remote_code is False
    with pytest.raises(ValueError, match=rf"names the class '{module}.UntrustedWan'.*trust_remote_code=True"):
        run(model)
    with pytest.raises(ValueError, match=rf"'{module}.UntrustedWan', outside the trusted packages"):
        load_teacher(str(tmp_path / "teacher"), f"{module}.UntrustedWan")
    assert module not in sys.modules and not marker.exists()

    # Opted in: the class is imported and the teacher loads through it.
    trusted = PeftModel.from_pretrained(tiny_cosmos_student(), str(adapter), trust_remote_code=True).eval()
    expected = run(PeftModel.from_pretrained(tiny_cosmos_student(), str(adapter), teacher=teacher).eval())
    assert torch.equal(run(trusted), expected)
    assert marker.exists() and type(trusted.peft_config["default"].teacher_module).__name__ == "UntrustedWan"
    # The opt-in is the user's, never written to the adapter's files.
    trusted.save_pretrained(tmp_path / "resaved")
    assert "trust_remote_code" not in json.loads((tmp_path / "resaved" / "adapter_config.json").read_text())


def test_load_adapter_passes_the_opt_in(teacher, tmp_path, monkeypatch):
    module, marker = write_module(tmp_path / "mods", UNTRUSTED_TEACHER, monkeypatch)
    teacher.save_pretrained(tmp_path / "teacher")
    adapter = saved_adapter(teacher, tmp_path / "adapter", tmp_path / "teacher", f"{module}.UntrustedWan")
    model = get_peft_model(tiny_cosmos_student(), CKTConfig(teacher=teacher, **SMALL))
    model.load_adapter(str(adapter), adapter_name="plain")
    model.load_adapter(str(adapter), adapter_name="trusted", trust_remote_code=True)
    assert model.peft_config["plain"].trust_remote_code is False
    assert model.peft_config["trusted"].trust_remote_code is True
    model.set_adapter("plain")
    with pytest.raises(ValueError, match=r"outside the trusted packages"):
        run(model.eval())
    assert not marker.exists()
    model.set_adapter("trusted")
    run(model.eval())
    assert marker.exists()


def test_trusted_teacher_classes_still_load_by_reference(teacher, tmp_path):
    teacher.save_pretrained(tmp_path / "teacher")
    adapter = saved_adapter(teacher, tmp_path / "adapter", tmp_path / "teacher")
    assert json.loads((adapter / "adapter_config.json").read_text())["teacher_class"].startswith("diffusers.")
    model = PeftModel.from_pretrained(tiny_cosmos_student(), str(adapter)).eval()
    expected = run(PeftModel.from_pretrained(tiny_cosmos_student(), str(adapter), teacher=teacher).eval())
    assert torch.equal(run(model), expected)
    # A config.json naming something that is not a model class of diffusers is refused.
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"_class_name": "not_a_class"}))
    with pytest.raises(ValueError, match=r"names no diffusers/transformers model class"):
        load_teacher(str(tmp_path / "odd"))


# --------------------------------------------------------------------------------------------- allow-list
@pytest.mark.parametrize("how", ["env", "env_class_path", "function", "function_class_path"])
def test_allow_listed_teacher_class_reloads_with_a_plain_from_pretrained(how, teacher, tmp_path, monkeypatch):
    module, marker = write_module(tmp_path / "mods", UNTRUSTED_TEACHER, monkeypatch)
    teacher.save_pretrained(tmp_path / "teacher")
    adapter = saved_adapter(teacher, tmp_path / "adapter", tmp_path / "teacher", f"{module}.UntrustedWan")
    expected = run(PeftModel.from_pretrained(tiny_cosmos_student(), str(adapter), teacher=teacher).eval())
    entry = f"{module}.UntrustedWan" if how.endswith("class_path") else module
    # A prefix that is not a package boundary ("ckt_untrusted" of "ckt_untrusted_1a2b3c4d") trusts nothing.
    monkeypatch.setenv(TRUSTED_TEACHERS_ENV, "ckt_untrusted, other_pkg.models")
    assert not is_trusted_teacher_class(f"{module}.UntrustedWan")

    def reload() -> PeftModel:  # as code that calls peft itself does (Trainer callbacks, LeRobot): no opt-in
        return PeftModel.from_pretrained(tiny_cosmos_student(), str(adapter)).eval()

    if how.startswith("env"):
        monkeypatch.setenv(TRUSTED_TEACHERS_ENV, f"other_pkg, {entry} ")  # read at load time
        model = reload()
        assert torch.equal(run(model), expected)
    else:
        with peft_ckt.trust_teacher_classes(entry):
            assert entry in peft_ckt.trusted_teacher_classes()
            model = reload()
            assert torch.equal(run(model), expected)
        # Left the block: the entry is gone, a new load is refused again.
        assert entry not in peft_ckt.trusted_teacher_classes()
        with pytest.raises(ValueError, match=r"outside the trusted packages .*and the allow-list"):
            run(reload())
        peft_ckt.trust_teacher_classes(entry)
        try:
            assert torch.equal(run(reload()), expected)
        finally:
            peft_ckt.untrust_teacher_classes(entry)
        assert not is_trusted_teacher_class(f"{module}.UntrustedWan")
    assert type(model.peft_config["default"].teacher_module).__name__ == "UntrustedWan" and marker.exists()
    # The allow-list is the user's: nothing of it is written to the adapter's files.
    model.save_pretrained(tmp_path / "resaved")
    saved = (tmp_path / "resaved" / "adapter_config.json").read_text()
    assert "trust_remote_code" not in saved and "other_pkg" not in saved


def test_refusal_names_the_allow_list_and_bad_entries_are_named(tmp_path, monkeypatch):
    module, marker = write_module(tmp_path / "mods", UNTRUSTED_TEACHER, monkeypatch)
    with pytest.raises(ValueError, match=rf"trust_remote_code=True`, or allow-list it: .*{TRUSTED_TEACHERS_ENV}"):
        load_teacher(str(tmp_path / "teacher"), f"{module}.UntrustedWan")
    monkeypatch.setenv(TRUSTED_TEACHERS_ENV, "good_pkg, my-pkg")
    with pytest.raises(ValueError, match=rf"{TRUSTED_TEACHERS_ENV} holds 'my-pkg', which is not a package prefix"):
        load_teacher(str(tmp_path / "teacher"), f"{module}.UntrustedWan")
    with pytest.raises(ValueError, match=r"`trust_teacher_classes` holds 'a..b'"):
        peft_ckt.trust_teacher_classes("a..b")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Unexpected keyword arguments")
def test_allow_listed_teacher_class_does_not_allow_pickle_weights(teacher, tmp_path, monkeypatch):
    module, marker = write_module(tmp_path / "mods", UNTRUSTED_TEACHER, monkeypatch)
    teacher_dir = tmp_path / "teacher"
    teacher.save_pretrained(teacher_dir, safe_serialization=False)
    adapter = saved_adapter(teacher, tmp_path / "adapter", teacher_dir, f"{module}.UntrustedWan")
    monkeypatch.setenv(TRUSTED_TEACHERS_ENV, module)
    with peft_ckt.trust_teacher_classes(module):
        model = PeftModel.from_pretrained(tiny_cosmos_student(), str(adapter)).eval()
        pickle_file = teacher_dir / "diffusion_pytorch_model.bin"
        with pytest.raises(ValueError, match=rf"only pickle weights \({pickle_file}\)") as refused:
            run(model)
        assert "allow-list" not in str(refused.value)  # the allow-list is not the way to allow pickle
        with pytest.raises(ValueError, match=r"only pickle weights"):
            load_teacher(str(teacher_dir), f"{module}.UntrustedWan")
        # Refused before the class's module was imported.
        assert module not in sys.modules and not marker.exists()
        # Pickle weights stay the user's explicit choice.
        trusted = PeftModel.from_pretrained(tiny_cosmos_student(), str(adapter), trust_remote_code=True).eval()
        expected = run(PeftModel.from_pretrained(tiny_cosmos_student(), str(adapter), teacher=teacher).eval())
        assert torch.equal(run(trusted), expected)


# --------------------------------------------------------------------------------------------- pickle weights
def test_teacher_with_only_pickle_weights_is_refused(teacher, tmp_path):
    teacher_dir = tmp_path / "teacher"
    teacher.save_pretrained(teacher_dir, safe_serialization=False)
    assert (teacher_dir / "diffusion_pytorch_model.bin").is_file()
    adapter = saved_adapter(teacher, tmp_path / "adapter", teacher_dir)
    model = PeftModel.from_pretrained(tiny_cosmos_student(), str(adapter)).eval()
    pickle_file = teacher_dir / "diffusion_pytorch_model.bin"
    with pytest.raises(ValueError, match=rf"only pickle weights \({pickle_file}\).*trust_remote_code=True"):
        run(model)
    with pytest.raises(ValueError, match=rf"only pickle weights \({pickle_file}\)"):
        load_teacher(str(teacher_dir))
    # Opted in: read as the library reads it.
    trusted = PeftModel.from_pretrained(tiny_cosmos_student(), str(adapter), trust_remote_code=True).eval()
    expected = run(PeftModel.from_pretrained(tiny_cosmos_student(), str(adapter), teacher=teacher).eval())
    assert torch.equal(run(trusted), expected)


# --------------------------------------------------------------------------------------------- policies
@register_policy("registered_test_policy")
class RegisteredPolicy(LiberoPolicy):
    @classmethod
    def from_pretrained(cls, path):
        return cls()


def policy_folder(folder: Path, policy_class: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"type": "custom", "policy_class": policy_class}))
    return folder


def test_untrusted_policy_class_is_not_imported_without_opt_in(tmp_path, monkeypatch):
    module, marker = write_module(tmp_path / "mods", UNTRUSTED_POLICY, monkeypatch)
    folder = policy_folder(tmp_path / "policy", f"{module}.UntrustedPolicy")
    for call in (lambda: load_policy(folder), lambda: check_policy_spec(folder)):
        with pytest.raises(ValueError, match=rf"names the class '{module}.UntrustedPolicy'.*--trust-remote-code"):
            call()
    assert module not in sys.modules and not marker.exists()

    # The command line refuses it in one line, before the simulator is imported.
    from peft_ckt.commands import main

    with pytest.raises(SystemExit, match=rf"eval-libero: error: .*'{module}.UntrustedPolicy'.*--trust-remote-code"):
        main(["eval-libero", "--suite", "libero_object", "--policy", str(folder), "--output", str(tmp_path / "out")])
    assert not marker.exists()

    policy = load_policy(folder, trust_remote_code=True)
    assert type(policy).__name__ == "UntrustedPolicy" and marker.exists()


def test_registered_and_package_policies_need_no_opt_in(tmp_path):
    registered = policy_folder(tmp_path / "registered", f"{__name__}.RegisteredPolicy")
    assert isinstance(load_policy(registered), RegisteredPolicy)
    from peft_ckt.libero.policies import StateMLPPolicy

    StateMLPPolicy(hidden_dim=8, chunk_size=2).save_pretrained(tmp_path / "mlp")
    assert isinstance(load_policy(tmp_path / "mlp"), StateMLPPolicy)


def test_policy_adapter_with_untrusted_teacher_reference(teacher, tmp_path, monkeypatch):
    module, marker = write_module(tmp_path / "mods", UNTRUSTED_TEACHER, monkeypatch)
    adapter = saved_adapter(teacher, tmp_path / "adapter", tmp_path / "teacher", f"{module}.UntrustedWan")
    with pytest.raises(ValueError, match=rf"teacher reference .*'{module}.UntrustedWan'.*--trust-remote-code"):
        check_policy_spec(adapter)
    check_policy_spec(adapter, trust_remote_code=True)
    assert not marker.exists()


# A folder's own code behind `auto_map`: transformers imports it for `transformers.AutoModel`.
AUTO_MAP_MODELING = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
import numpy as np
import torch
from transformers import PretrainedConfig, PreTrainedModel


class FolderConfig(PretrainedConfig):
    model_type = "ckt_folder_code"


class FolderPolicy(PreTrainedModel):
    config_class = FolderConfig

    def __init__(self, config):
        super().__init__(config)
        self.linear = torch.nn.Linear(2, 2)
        self.post_init()

    def reset(self):
        pass

    def select_action(self, observation):
        return np.zeros(7, dtype=np.float32)
"""

AUTO_MAP_LOAD = textwrap.dedent(
    """
    import pathlib, sys
    from peft_ckt.libero.policies import load_policy

    folder, marker = sys.argv[1], pathlib.Path(sys.argv[2])
    try:
        load_policy(folder)
        print("LOADED")
    except Exception as err:
        print("REFUSED", type(err).__name__, str(err).replace("\\n", " "))
    print("RAN" if marker.exists() else "NOT RAN")
    print("TRUSTED", type(load_policy(folder, trust_remote_code=True)).__name__)
    """
)


def test_policy_folder_with_auto_map_code_is_refused_without_a_prompt(tmp_path):
    from safetensors.torch import save_file

    folder, marker = tmp_path / "policy", tmp_path / "folder_code_ran"
    folder.mkdir()
    (folder / "modeling_folder.py").write_text(AUTO_MAP_MODELING.format(marker=str(marker)))
    auto_map = {"AutoConfig": "modeling_folder.FolderConfig", "AutoModel": "modeling_folder.FolderPolicy"}
    config = {"policy_class": "transformers.AutoModel", "model_type": "ckt_folder_code", "auto_map": auto_map}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"linear.weight": torch.zeros(2, 2), "linear.bias": torch.zeros(2)}, folder / "model.safetensors")

    # Refused by the package's own check, before anything is imported, in one line on the command line.
    with pytest.raises(ValueError, match=r"has an `auto_map` into the folder's own code .*--trust-remote-code"):
        check_policy_spec(folder)
    from peft_ckt.commands import main

    with pytest.raises(SystemExit, match=r"eval-libero: error: .*`auto_map`.*--trust-remote-code"):
        main(["eval-libero", "--suite", "libero_object", "--policy", str(folder), "--output", str(tmp_path / "out")])

    # A user who answers "y" on stdin has not opted in: nothing asks, nothing runs.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(peft_ckt.__file__).parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", AUTO_MAP_LOAD, str(folder), str(marker)],
        input="y\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Do you wish to run the custom code" not in output
    assert "REFUSED ValueError" in proc.stdout and "`auto_map`" in proc.stdout, output[-3000:]
    assert "NOT RAN" in proc.stdout
    # Opted in: the folder's code runs (transformers is told `trust_remote_code=True`: no prompt either).
    assert "TRUSTED FolderPolicy" in proc.stdout and marker.exists(), output[-3000:]


# --------------------------------------------------------------------------------------------- Hub
CORRUPT_PULL = textwrap.dedent(
    """
    import sys
    import peft_ckt
    from peft import PeftModel
    from peft_ckt.testing import tiny_cosmos_student, tiny_wan_teacher
    try:
        PeftModel.from_pretrained(tiny_cosmos_student(), sys.argv[1], teacher=tiny_wan_teacher())
    except ValueError as err:
        print("ERROR", err)
    """
)


def test_corrupt_weights_from_the_hub_name_the_file(teacher, tmp_path):
    adapter = saved_adapter(teacher, tmp_path / "adapter", tmp_path / "teacher")
    repo = f"ckt-tester/corrupt-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(peft_ckt.__file__).parents[1]), env.get("PYTHONPATH", "")])
    with HubTestServer(lifetime_s=180) as hub:
        hub.create_repo(repo)
        files = {
            "adapter_config.json": (adapter / "adapter_config.json").read_bytes(),
            "adapter_model.safetensors": (adapter / "adapter_model.safetensors").read_bytes()[:100],  # truncated
        }
        hub.commit(
            repo,
            [{"key": "file", "value": {"path": p, "content": base64.b64encode(d).decode()}} for p, d in files.items()],
        )
        env["HF_ENDPOINT"] = hub.endpoint
        proc = subprocess.run(
            [sys.executable, "-c", CORRUPT_PULL, repo], env=env, capture_output=True, text=True, timeout=180
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"ERROR Cannot read the adapter weights {repo}/adapter_model.safetensors on the Hub (cached at " in (
        proc.stdout
    ), proc.stdout + proc.stderr[-3000:]
    assert "truncated or corrupt; download it again with `force_download=True`" in proc.stdout
