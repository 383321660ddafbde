"""`--recipe paper`: the authors' optimisation recipe (AdamW betas (0.9, 0.95), lr 3e-4, warm-up then cosine, bf16)
reaches the arguments, the optimizer and the schedule; explicit flags still win."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from peft_ckt.commands import build_parser, main
from peft_ckt.training import CKTTrainingArguments
from peft_ckt.training.arguments import RECIPES, arguments_from_namespace

torch.set_num_threads(1)

PAPER = {
    "learning_rate": 3e-4,
    "adam_beta1": 0.9,
    "adam_beta2": 0.95,
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.01,
    "mixed_precision": "bf16",
}


def parse(argv: list[str]) -> CKTTrainingArguments:
    return arguments_from_namespace(build_parser().parse_args(["train", *argv]), CKTTrainingArguments)


def test_paper_recipe_sets_the_authors_values():
    args = parse(["--preset", "tiny", "--recipe", "paper"])
    assert args.recipe == "paper"
    assert {name: getattr(args, name) for name in PAPER} == PAPER
    assert RECIPES["paper"].items() >= PAPER.items()


def test_without_a_recipe_our_defaults_stay():
    args = parse(["--preset", "tiny"])
    assert args.recipe is None
    assert (args.learning_rate, args.adam_beta2, args.warmup_ratio, args.mixed_precision) == (1e-3, 0.999, 0.05, None)


def test_explicit_flags_win_over_the_recipe_even_at_the_defaults():
    args = parse(["--recipe", "paper", "--adam-beta2", "0.999", "--learning-rate", "1e-3", "--mixed-precision", "no"])
    assert (args.adam_beta2, args.learning_rate, args.mixed_precision) == (0.999, 1e-3, "no")
    assert args.adam_beta1 == 0.9 and args.warmup_ratio == 0.01  # the rest still from the recipe


def test_recipe_from_python_and_unknown_names():
    args = CKTTrainingArguments(recipe="paper", learning_rate=5e-4)
    assert args.learning_rate == 5e-4 and args.adam_beta2 == 0.95 and args.mixed_precision == "bf16"
    with pytest.raises(ValueError, match="Unknown --recipe"):
        CKTTrainingArguments(recipe="nope")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--recipe", "nope"])


@pytest.fixture
def fresh_accelerate_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_paper_recipe_trains_with_its_optimizer_and_schedule(tmp_path, fresh_accelerate_state):
    argv = ["train", "--preset", "tiny", "--recipe", "paper", "--output-dir", str(tmp_path), "--max-steps", "4"]
    argv += ["--warmup-steps", "2", "--per-device-batch-size", "4", "--num-train-samples", "16"]
    argv += ["--checkpointing-steps", "2", "--report-to", "none", "--no-progress-bar"]
    assert main(argv) == 0
    saved = json.loads((tmp_path / "training_args.json").read_text())
    assert saved["recipe"] == "paper" and saved["mixed_precision"] == "bf16" and saved["adam_beta2"] == 0.95
    # The optimizer state of the checkpoint holds the betas it really ran with.
    (optimizer_file,) = (tmp_path / "checkpoints").glob("checkpoint-2/optimizer*.bin")
    state = torch.load(optimizer_file, weights_only=True)
    assert {tuple(group["betas"]) for group in state["param_groups"]} == {(0.9, 0.95)}
    assert {group["initial_lr"] for group in state["param_groups"]} == {3e-4}
    # Linear warm-up over 2 steps, then cosine to 0 at step 4.
    lrs = [json.loads(line)["lr/adapters"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1.5e-4, 3e-4, 1.5e-4, 0.0], abs=1e-9)
