"""The README's quickstart and examples/quickstart.py run as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quickstart_block_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md#quickstart", "exec"), namespace)
    assert (tmp_path / "ckt-adapter" / "adapter_model.safetensors").exists()
    assert namespace["out"].sample.shape == namespace["baseline"].sample.shape


def test_quickstart_script_trains_saves_and_compares(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--steps", "3", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CKT training" in result.stderr  # the progress bar
    assert re.search(r"student alone: [\d.]+ +student \+ CKT \(reloaded\): [\d.]+", result.stdout)
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(os.listdir(tmp_path))


def test_readme_causal_lm_block_runs_and_shows_the_logits_shape():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### What it works with", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "out.logits.shape" in code and "unload()" in code
    namespace: dict = {}
    exec(compile(code, "README.md#causal-lm", "exec"), namespace)
    assert namespace["token_logits"].shape == (2, 6, 64)
