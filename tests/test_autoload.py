"""The start-up hook installed with the package (`peft_ckt_autoload.pth` -> `_peft_ckt_autoload`): a plain
`PeftModel.from_pretrained` of a CKT adapter works without `import peft_ckt`.

A site directory holding the repository's .pth file is added with `site.addsitedir`, exactly what the interpreter
does for site-packages at start-up; the wheel and the editable wheel built from a copy of the project must both put
the .pth file at their root (= site-packages).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PTH = "peft_ckt_autoload.pth"

# Plain torch modules (no peft_ckt import) for both the saving and the loading process.
MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Teacher(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 8)

        def forward(self, x):
            return self.proj(x)

    class Student(nn.Module):
        def __init__(self):
            super().__init__()
            self.text = nn.Linear(5, 8)
            self.out = nn.Linear(8, 3)

        def forward(self, x, text):
            return self.out(x + self.text(text).mean(1, keepdim=True))

    def models():
        torch.manual_seed(0)  # the frozen models are not in the adapter: both processes build the same ones
        return Student(), Teacher()

    def inputs():
        g = torch.Generator().manual_seed(0)
        return dict(x=torch.randn(2, 4, 8, generator=g), text=torch.randn(2, 3, 5, generator=g)), {
            "x": torch.randn(2, 7, 6, generator=g)
        }
    """
)

LOAD = MODELS + textwrap.dedent(
    """
    import site, sys
    site.addsitedir(sys.argv[1])  # what start-up does for site-packages
    print("AFTER_SITE", "peft_ckt" in sys.modules)
    import importlib.util
    importlib.util.find_spec("peft")  # a lookup (transformers does this) imports nothing
    print("AFTER_LOOKUP", "peft" in sys.modules, "peft_ckt" in sys.modules)
    from peft import PeftModel
    student, teacher = models()
    try:
        model = PeftModel.from_pretrained(student, sys.argv[2], teacher=teacher).eval()
    except Exception as err:
        print("ERROR", type(err).__name__, err)
        raise SystemExit(0)
    student_inputs, teacher_inputs = inputs()
    with torch.no_grad():
        torch.save(model(**student_inputs, teacher_inputs=teacher_inputs), sys.argv[3])
    print("LOADED", type(model.peft_config["default"]).__module__)
    """
)


def run(code: str, *args: str, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PEFT_CKT_NO_AUTOLOAD"}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env_overrides})
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    import torch
    from peft import get_peft_model

    from peft_ckt import CKTConfig

    torch.set_num_threads(1)
    namespace: dict = {}
    exec(MODELS, namespace)
    folder = tmp_path_factory.mktemp("autoload")
    student, teacher = namespace["models"]()
    config = CKTConfig(
        teacher=teacher,
        teacher_layer="proj",
        target_modules="text",
        num_context_tokens=2,
        num_experts=2,
        top_k=1,
        bottleneck_dim=4,
        router_hidden_dim=4,
        num_attention_heads=2,
    )
    model = get_peft_model(student, config)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1)  # away from the seeded initialisation: only a real load reproduces it
    model.eval()
    model.save_pretrained(folder / "adapter")
    student_inputs, teacher_inputs = namespace["inputs"]()
    with torch.no_grad():
        expected = model(**student_inputs, teacher_inputs=teacher_inputs)
    site_dir = folder / "site"
    site_dir.mkdir()
    shutil.copy(REPO / PTH, site_dir / PTH)
    return folder, expected


def test_plain_peft_loads_a_ckt_adapter_without_import_peft_ckt(saved):
    import torch

    folder, expected = saved
    proc = run(LOAD, str(folder / "site"), str(folder / "adapter"), str(folder / "out.pt"))
    # Nothing at start-up or on a lookup; peft_ckt is imported (registering "ckt") when peft is.
    assert "AFTER_SITE False" in proc.stdout and "AFTER_LOOKUP False False" in proc.stdout
    assert "LOADED peft_ckt.config" in proc.stdout
    assert torch.equal(torch.load(folder / "out.pt"), expected)


def test_the_hook_can_be_turned_off(saved):
    folder, _ = saved
    proc = run(LOAD, str(folder / "site"), str(folder / "adapter"), str(folder / "off.pt"), PEFT_CKT_NO_AUTOLOAD="1")
    assert "ERROR KeyError 'CKT'" in proc.stdout  # peft's own error: CKT is registered by `import peft_ckt` only


def test_wheel_and_editable_install_put_the_hook_into_site_packages(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "_peft_ckt_autoload.py", PTH):
        shutil.copy(REPO / name, project / name)
    shutil.copytree(REPO / "peft_ckt", project / "peft_ckt", ignore=shutil.ignore_patterns("__pycache__"))
    for hook in ("build_wheel", "build_editable"):  # one process each: setuptools keeps state between builds
        proc = subprocess.run(
            [sys.executable, "-c", f"import setuptools.build_meta as b, sys; b.{hook}(sys.argv[1])", str(tmp_path)],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    wheel = tmp_path / "peft_ckt-0.1.0-py3-none-any.whl"
    (editable,) = tmp_path.glob("peft_ckt-*.editable-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {PTH, "_peft_ckt_autoload.py", "peft_ckt/__init__.py"} <= names
        assert archive.read(PTH).decode().strip() == "import _peft_ckt_autoload"
    with zipfile.ZipFile(editable) as archive:
        assert PTH in archive.namelist()
        finder = next(name for name in archive.namelist() if name.endswith("_finder.py"))
        assert "'_peft_ckt_autoload':" in archive.read(finder).decode()  # the editable finder maps the hook module


# A stand-in for LeRobot (not installed in the core venv): only its policy registry module, which records its import.
FAKE_LEROBOT = {
    "lerobot/__init__.py": "",
    "lerobot/configs/__init__.py": "",
    "lerobot/configs/policies.py": "print('REGISTRY_IMPORTED')\n",
}
LEROBOT_IMPORT = textwrap.dedent(
    """
    import site, sys, warnings
    site.addsitedir(sys.argv[1])
    print("AFTER_SITE", "peft_ckt" in sys.modules)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import lerobot.configs.policies
    print("TRIED", "peft_ckt.integrations.lerobot" in sys.modules or any("LeRobot" in str(w.message) for w in caught))
    for w in caught:
        print("WARNING", w.message)
    """
)


@pytest.fixture
def fake_lerobot(tmp_path) -> Path:
    for name, text in FAKE_LEROBOT.items():
        (tmp_path / "lib" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "lib" / name).write_text(text)
    (tmp_path / "site").mkdir()
    shutil.copy(REPO / PTH, tmp_path / "site" / PTH)
    return tmp_path


def test_importing_lerobots_policy_registry_registers_the_lerobot_policy_types(fake_lerobot):
    proc = run(LEROBOT_IMPORT, str(fake_lerobot / "site"), PYTHONPATH=f"{REPO}{os.pathsep}{fake_lerobot / 'lib'}")
    assert "AFTER_SITE False" in proc.stdout and "REGISTRY_IMPORTED" in proc.stdout
    # The stand-in lacks what the policy types import: the hook tried, and says so without breaking the import.
    assert "TRIED True" in proc.stdout
    assert "could not register its LeRobot policy types" in proc.stdout
    assert "import peft_ckt.integrations.lerobot" in proc.stdout


def test_the_lerobot_hook_can_be_turned_off(fake_lerobot):
    proc = run(
        LEROBOT_IMPORT,
        str(fake_lerobot / "site"),
        PYTHONPATH=f"{REPO}{os.pathsep}{fake_lerobot / 'lib'}",
        PEFT_CKT_NO_AUTOLOAD="1",
    )
    assert "REGISTRY_IMPORTED" in proc.stdout and "TRIED False" in proc.stdout


def test_the_core_package_imports_without_lerobot():
    proc = run("import peft_ckt, peft_ckt.integrations, sys; print('LEROBOT', 'lerobot' in sys.modules)")
    assert "LEROBOT False" in proc.stdout
