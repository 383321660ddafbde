"""The `peft-ckt` console command: every subcommand registers, and every flag is explained by --help."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from peft_ckt.commands import SUBCOMMAND_MODULES, build_parser, main

OWN_SUBCOMMANDS = ("train", "cache-teacher", "push")
# The LIBERO tools that were `python -m` entry points of the library (their --help imports no simulator).
LIBERO_TOOL_SUBCOMMANDS = ("libero-speed", "liberoplus-tasks")


def subparsers_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_training_and_sharing_subcommands_are_registered():
    assert {"train", "cache_teacher", "push"} <= set(SUBCOMMAND_MODULES)
    assert set(OWN_SUBCOMMANDS) <= set(subparsers_of(build_parser()))


def test_libero_tools_are_subcommands():
    assert set(LIBERO_TOOL_SUBCOMMANDS) <= set(subparsers_of(build_parser()))


@pytest.mark.parametrize("name", OWN_SUBCOMMANDS + LIBERO_TOOL_SUBCOMMANDS)
def test_every_flag_has_help(name, capsys):
    parser = subparsers_of(build_parser())[name]
    assert parser.description and len(parser.description) > 40
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = action.option_strings[0] if action.option_strings else action.dest
        assert action.help and len(action.help) > 10, f"`peft-ckt {name} {label}` has no help text"
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for action in parser._actions:
        for option in action.option_strings:
            assert option in printed


def test_train_flags_map_onto_the_training_arguments():
    from peft_ckt.training.arguments import CKTTrainingArguments, arguments_from_namespace

    parser = subparsers_of(build_parser())["train"]
    namespace = parser.parse_args(
        ["--preset", "tiny", "--max-steps", "7", "--no-router-noise", "--resume", "--mixed-precision", "bf16"]
    )
    args = arguments_from_namespace(namespace, CKTTrainingArguments)
    assert (args.preset, args.max_steps, args.router_noise, args.resume) == ("tiny", 7, False, "latest")
    assert args.mixed_precision == "bf16" and args.learning_rate == 1e-3
    with pytest.raises(SystemExit):
        parser.parse_args(["--mixed-precision", "fp8"])
    with pytest.raises(ValueError, match="max-steps"):
        CKTTrainingArguments(max_steps=0)


def test_console_script_help():
    script = Path(sys.executable).with_name("peft-ckt")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for name in OWN_SUBCOMMANDS:
        assert name in proc.stdout


def test_python_dash_m_runs_the_command():
    # The documented `python -m peft_ckt.commands ...` / `accelerate launch -m peft_ckt.commands train ...` form.
    out = subprocess.run(
        [sys.executable, "-m", "peft_ckt.commands", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "peft-ckt" in out.stdout and "eval-libero" in out.stdout


PUSH_EARLY = """
import sys
from peft_ckt.commands import main
folder, repo_ids = sys.argv[1], sys.argv[2:]
for repo_id in repo_ids:
    try:
        main(["push", folder, repo_id, "--preset", "tiny"])
    except SystemExit as exit_:
        print("EXIT", exit_.code)
# Building the tiny student imports diffusers: the checks must come before any of that work.
print("BUILT", "diffusers" in sys.modules)
"""


@pytest.fixture(scope="module")
def ckt_adapter_folder(tmp_path_factory):
    import torch
    from peft import get_peft_model

    from peft_ckt import CKTConfig
    from peft_ckt.testing import TinyWorldActionModel

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("adapter")
    config = CKTConfig(
        teacher=TinyWorldActionModel(), teacher_layer="obs_in", target_modules="text_proj", num_experts=2, top_k=1
    )
    config.bottleneck_dim = config.router_hidden_dim = 8
    get_peft_model(TinyWorldActionModel(), config).save_pretrained(folder)
    return folder


def test_push_checks_repo_id_and_token_before_any_work(ckt_adapter_folder, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path), OMP_NUM_THREADS="1")  # no HF_TOKEN, no saved login
    repo_ids = ["/tmp/somewhere", "./out", "a/b/c", "me/repo"]
    proc = subprocess.run(
        [sys.executable, "-c", PUSH_EARLY, str(ckt_adapter_folder), *repo_ids],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    exits = [line[len("EXIT ") :] for line in proc.stdout.splitlines() if line.startswith("EXIT ")]
    assert len(exits) == 4, proc.stdout + proc.stderr[-3000:]
    assert "'/tmp/somewhere' is not a Hub repository id 'user/name' or 'name' (a local path" in exits[0]
    assert "'./out' is not a Hub repository id" in exits[1] and "(a local path" in exits[1]
    assert exits[2].endswith("'a/b/c' is not a Hub repository id 'user/name' or 'name'.")
    assert exits[3].startswith("peft-ckt push: error: no Hugging Face token: pass --token, set HF_TOKEN")
    assert "BUILT False" in proc.stdout and "Traceback" not in proc.stderr


def test_push_refuses_a_folder_that_is_not_a_ckt_adapter(ckt_adapter_folder, tmp_path):
    with pytest.raises(SystemExit, match=rf"{tmp_path} is not an adapter folder \(no adapter_config.json\)"):
        main(["push", str(tmp_path), "me/repo"])
    config = json.loads((ckt_adapter_folder / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LORA"}))
    with pytest.raises(SystemExit, match=r"says peft_type='LORA', not 'CKT'"):
        main(["push", str(tmp_path), "me/repo"])
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match=r"has no adapter_model.safetensors"):
        main(["push", str(tmp_path), "me/repo"])


def _one_line_error(argv: list[str], capsys) -> str:
    """Runs `peft-ckt ARGV`, which must fail with status 2 and one line on stderr (or a one-line SystemExit)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    code = exit_info.value.code
    if isinstance(code, str):
        line = code
    else:
        assert code == 2
        line = capsys.readouterr().err.strip()
    assert line and "\n" not in line and "Traceback" not in line, line
    return line


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "nope"], r"^peft-ckt train: error: Unknown preset 'nope'; available: \[.*'tiny'"),
        (
            ["--preset", "tiny", "--resume", "/no/such/checkpoint"],
            r"--resume '/no/such/checkpoint': no such checkpoint",
        ),
        (["--preset", "tiny", "--max-steps", "0"], r"^peft-ckt train: error: --max-steps: must be >= 1, got 0\.$"),
        (["--preset", "tiny", "--learning-rate", "0"], r"--learning-rate: must be > 0, got 0.0"),
        (["--preset", "tiny", "--learning-rate=-1e-4"], r"--learning-rate: must be > 0"),
        # a negative value with an exponent parses (argparse alone says "expected one argument"), then is checked
        (["--preset", "tiny", "--learning-rate", "-1e-3"], r"^peft-ckt train: error: --learning-rate: must be > 0"),
        (["--preset", "tiny", "--weight-decay", "-1"], r"^peft-ckt train: error: --weight-decay: must be a finite"),
        (["--preset", "tiny", "--weight-decay", "nan"], r"--weight-decay: must be a finite"),
        # the adapter config's own errors, named by flag
        (["--preset", "tiny", "--top-k", "9"], r"^peft-ckt train: error: --top-k: `top_k` \(9\) cannot be larger"),
        (["--preset", "tiny", "--adapter-dropout", "1.5"], r"^peft-ckt train: error: --adapter-dropout: "),
        (["--preset", "tiny", "--load-balance-weight", "-1"], r"^peft-ckt train: error: --load-balance-weight: "),
        (["--preset", "tiny", "--load-balance-weight", "nan"], r"--load-balance-weight: .*finite"),
        ([], r"no --preset given"),
    ],
)
def test_train_argument_errors_are_one_line(argv, message, capsys):
    line = _one_line_error(["train", *argv], capsys)
    assert re.search(message, line), line


def test_train_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    existing = tmp_path / "file"
    existing.write_text("x")
    line = _one_line_error(["train", "--preset", "tiny", "--output-dir", str(existing)], capsys)
    assert line.startswith("peft-ckt train: error: --output-dir: ") and "is a file" in line


def test_cache_teacher_checks_batch_size_before_creating_the_output(tmp_path, capsys):
    out = tmp_path / "cache"
    line = _one_line_error(
        ["cache-teacher", "--preset", "tiny", "--output-dir", str(out), "--batch-size", "0"], capsys
    )
    assert line == "peft-ckt cache-teacher: error: --batch-size: must be >= 1, got 0."
    assert not out.exists()


def test_train_argument_error_prints_no_traceback():
    script = Path(sys.executable).with_name("peft-ckt")
    proc = subprocess.run(
        [str(script), "train", "--preset", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Unknown preset 'nope'" in proc.stderr


def test_config_error_prints_no_traceback_and_exits_2():
    script = Path(sys.executable).with_name("peft-ckt")
    proc = subprocess.run(
        [str(script), "train", "--preset", "tiny", "--top-k", "9"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("peft-ckt train: error: --top-k: ")
