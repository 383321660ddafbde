"""The `peft-ckt` console command: every subcommand registers, and every flag is explained by --help."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from peft_ckt.commands import SUBCOMMAND_MODULES, build_parser, main

OWN_SUBCOMMANDS = ("train", "cache-teacher", "push")


def subparsers_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_training_and_sharing_subcommands_are_registered():
    assert {"train", "cache_teacher", "push"} <= set(SUBCOMMAND_MODULES)
    assert set(OWN_SUBCOMMANDS) <= set(subparsers_of(build_parser()))


@pytest.mark.parametrize("name", OWN_SUBCOMMANDS)
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
