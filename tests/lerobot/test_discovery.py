"""`pip install "peft-ckt[lerobot]"` alone gives LeRobot the `ckt` and `ckt_wam` policy types: peft-ckt's start-up
hook registers them when LeRobot's policy registry is imported, in `lerobot-train` and `lerobot-eval` alike, with no
`lerobot_policy_*` distribution installed (this venv has none: scripts/lerobot_env.sh installs the extra only)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _command(args: list[str], **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PEFT_CKT_NO_AUTOLOAD"}
    env.update({"HF_HUB_OFFLINE": "1", **env_overrides})
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def test_no_lerobot_policy_plugin_distribution_is_installed():
    names = [dist.metadata["Name"] for dist in importlib.metadata.distributions()]
    assert not [name for name in names if name and name.startswith("lerobot_policy_")]


def test_importing_lerobots_policy_registry_registers_both_policy_types():
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class

    assert {"ckt", "ckt_wam"} <= set(PreTrainedConfig.get_known_choices())
    # LeRobot finds the policy classes beside their configs by its naming convention.
    assert get_policy_class("ckt").__module__ == "peft_ckt.integrations.lerobot.modeling_ckt"
    assert get_policy_class("ckt_wam").name == "ckt_wam"


@pytest.mark.parametrize("command", ["lerobot-train", "lerobot-eval"])
def test_lerobot_commands_parse_policy_type_ckt(command):
    # `--help` after `--policy.type=ckt` lists the ckt config's own fields: the command resolved the type.
    done = _command([str(BIN / command), "--policy.type=ckt", "--help"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--policy.student_path" in done.stdout and "--policy.teacher_layer" in done.stdout


def test_the_hook_turned_off_leaves_lerobot_without_ckt():
    done = _command([str(BIN / "lerobot-train"), "--policy.type=ckt", "--help"], PEFT_CKT_NO_AUTOLOAD="1")
    assert done.returncode != 0 and "invalid choice: 'ckt'" in done.stderr


def test_the_plugin_distribution_still_registers_the_types_and_keeps_its_module_names():
    # Its source folder on the path stands in for the installed distribution (what LeRobot's discovery imports).
    code = (
        "import lerobot_policy_ckt\n"
        "from lerobot.configs.policies import PreTrainedConfig\n"
        "from lerobot_policy_ckt.modeling_ckt import CKTPolicy\n"
        "from lerobot_policy_ckt.modeling_ckt_wam import CKTWamPolicy\n"
        "from peft_ckt.integrations.lerobot import modeling_ckt, modeling_ckt_wam\n"
        "assert {'ckt', 'ckt_wam'} <= set(PreTrainedConfig.get_known_choices())\n"
        "assert CKTPolicy is modeling_ckt.CKTPolicy and CKTWamPolicy is modeling_ckt_wam.CKTWamPolicy\n"
        "print('OK')\n"
    )
    done = _command(
        [sys.executable, "-c", code],
        PEFT_CKT_NO_AUTOLOAD="1",
        PYTHONPATH=str(REPO / "integrations" / "lerobot_policy_ckt"),
    )
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]
