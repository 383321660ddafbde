"""The example scripts run as documented and print what they claim."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run_example(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_wan_to_cosmos_counts_the_paper_pairing_on_the_meta_device():
    out = run_example("wan_to_cosmos.py").stdout
    # d_s is Cosmos' text_embed_dim (1024): the context enters its cross-attention without a projection.
    assert "d_t=5120, d_s=1024" in out
    assert "bank on device meta" in out
    assert "trainable params: 69,060,617 || all params: 2,025,474,057" in out
    assert "trainable parameters at d_s=1024: 69,060,617" in out
    # the paper's count, at d_s=2048 (BENCHMARKS.md)
    assert "the same bank at the paper's d_s=2048: 187,395,081" in out
    assert "16,394,878,784 parameters" in out  # Wan2.1-I2V-14B-shaped teacher
    assert "1,956,413,440 parameters" in out  # Cosmos-Predict2-2B-shaped student


def test_quickstart_table_scores_every_row_on_the_held_out_set_and_ckt_wins(tmp_path):
    result = run_example("quickstart.py", "--steps", "40", "--output-dir", str(tmp_path))
    assert "CKT training" in result.stderr  # the progress bar
    scores = {
        name.strip(): float(value) for name, value in re.findall(r"^  (\S.*?) +(\d+\.\d+)$", result.stdout, flags=re.M)
    }
    assert set(scores) == {
        "predict zeros",
        "predict the training-set mean colour",
        "student alone (adapter disabled)",
        "student + CKT (reloaded from disk)",
        "reference: student told the colour in its prompt",
    }
    with_ckt = scores["student + CKT (reloaded from disk)"]
    assert with_ckt < 0.5 * scores["predict zeros"]
    assert with_ckt < scores["predict the training-set mean colour"]
    assert with_ckt < scores["student alone (adapter disabled)"]
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(os.listdir(tmp_path))
