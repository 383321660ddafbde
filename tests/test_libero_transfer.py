"""The LIBERO transfer experiment's settings, cache keys and command line (experiments/libero_transfer).

The stages themselves are tested in test_wam.py (data splits, adapters, report) and test_wam_libero.py (rollouts).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from experiments.libero_transfer.cache import (
    COLLECTION_FIELDS,
    adapter_fields,
    dataset_folders,
    eval_key,
    pretrain_fields,
)
from experiments.libero_transfer.settings import PERTURBATION_KINDS, DemoSettings, TransferSettings

# The evaluation key of the default settings (QUICK differs in eval_max_steps only).
DEFAULT_EVAL_KEY = {
    "suite": "libero_object",
    "severity": 3,
    "seed": 0,
    "image_size": 32,
    "eval_init_offset": 40,
    "eval_max_steps": 200,
    "n_action_steps": 8,
}

# Computed with the code before the experiment left `peft_ckt.wam` (peft_ckt/wam/experiment.py at d0e5777): every
# cached demonstration set, model, adapter and episode log keeps its folder. A change here invalidates every cache.
KEYS = {
    "default": {
        "collection": "1d6d74a835",
        "teacher": "a26e2d5d26",
        "student": "0a0df1019e",
        "ckt": "d53f9b792e",
        "lora": "d1fbe949c1",
        "data": {
            "clean": "clean-e33a70c0c2",
            "perturbed": "perturbed-50e58631b0",
            "heldout": "heldout-b8a8dbeef7",
            "student": "student-7d1dac572c",
        },
        "eval": DEFAULT_EVAL_KEY,
    },
    "quick": {
        "collection": "1d6d74a835",
        "teacher": "f499231c89",
        "student": "7f38d566ce",
        "ckt": "bd552d0077",
        "lora": "5a67c3e782",
        "data": {
            "clean": "clean-3072542f22",
            "perturbed": "perturbed-3f2518d6eb",
            "heldout": "heldout-84fcdb88f4",
            "student": "student-33f5c7a5c3",
        },
        "eval": {**DEFAULT_EVAL_KEY, "eval_max_steps": 80},
    },
}


@pytest.mark.parametrize("name", ["default", "quick"])
def test_cache_keys_are_those_of_the_code_before_the_move(name):
    settings = TransferSettings() if name == "default" else TransferSettings.quick()
    expected = KEYS[name]
    assert settings.key(*COLLECTION_FIELDS) == expected["collection"]
    for role in ("teacher", "student"):
        assert settings.key(*pretrain_fields(role)) == expected[role]
    for kind in ("ckt", "lora"):
        assert settings.key(*adapter_fields(settings, kind)) == expected[kind]
    assert {k: p.name for k, p in dataset_folders(settings, Path("cache")).items()} == expected["data"]
    assert eval_key(settings) == expected["eval"]


def test_one_settings_class_and_the_librarys_perturbations():
    from peft_ckt.libero.perturbations import PERTURBATIONS

    assert DemoSettings is TransferSettings
    assert PERTURBATION_KINDS is PERTURBATIONS
    assert PERTURBATION_KINDS == ("camera", "robot", "language", "light", "background", "noise", "layout")
    # Every field says what it is (the command line's help).
    assert all(f.metadata.get("help") for f in dataclasses.fields(TransferSettings))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"teacher_steps": 0}, "teacher_steps must be >= 1"),
        ({"eval_episodes": -1}, "eval_episodes must be >= 1"),
        ({"ckt_lr": 0.0}, "ckt_lr must be > 0"),
        ({"adapter_seed": -1}, "adapter_seed must be >= 0"),
        ({"teacher_layer": 6}, "teacher_layer=6: the teacher has 6 blocks"),
        ({"teacher_layer": -2}, "teacher_layer=-2"),
        ({"top_k": 5}, r"top_k must be <= num_experts \(4\)"),
        ({"adapter_dropout": 1.0}, r"adapter_dropout must be in \[0, 1\)"),
        ({"attention_dropout": -0.1}, "attention_dropout must be in"),
        ({"ablations": ("no_router",)}, "ablations: unknown"),
        ({"image_size": 36}, "image_size must be a multiple of 8"),
        ({"severity": 6}, "severity must be in 1..5"),
        ({"eval_tasks": ()}, "eval_tasks must name at least one task"),
        ({"heldout_tasks": (0, -1)}, "heldout_tasks must hold task ids >= 0"),
    ],
)
def test_settings_are_validated(changes, message):
    with pytest.raises(ValueError, match=message):
        TransferSettings(**changes)
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TransferSettings.quick(), **changes)


def test_settings_accept_their_edge_values():
    TransferSettings(teacher_layer=-1, top_k=4, student_tasks=(), ablations=("no_specialized",), lora_rank=0)
    TransferSettings(teacher_layer=5, adapter_dropout=0.5, image_size=16, workers=0, teacher_perturbed_episodes=0)


def test_command_line_keeps_the_flags_of_the_former_example(capsys):
    import pytest

    import experiments.libero_transfer.__main__ as module

    # make demo: CKT also trains the student's cross-attention keys/values; "none" is the paper's frozen student.
    args, settings, seeds = module.parse_settings([])
    assert settings.ckt_modules_to_save == ("attn2.to_k", "attn2.to_v") and seeds is None
    assert args.output == "outputs/demo"
    args, settings, _ = module.parse_settings(["--ckt-modules-to-save", "none", "--quick", "--eval-episodes", "3"])
    assert settings.ckt_modules_to_save == () and settings.eval_episodes == 3 and settings.teacher_steps == 100
    assert args.output == "outputs/demo-quick"  # the pipeline check keeps the full run's report
    _, settings, _ = module.parse_settings(["--ckt-modules-to-save", "attn2.to_v"])
    assert settings.ckt_modules_to_save == ("attn2.to_v",)
    _, _, seeds = module.parse_settings(["--adapter-seeds", "0,2"])
    assert seeds == (0, 2)
    for bad, message in (
        (["--ckt-modules-to-save", ","], "names no module"),
        (["--eval-tasks", "0,12"], "tasks 0-9"),
        (["--adapter-seed", "1", "--adapter-seeds", "0,1"], "not both"),
        (["--adapter-seeds", "1,1"], "must differ"),
    ):
        with pytest.raises(SystemExit):
            module.parse_settings(bad)
        assert message in capsys.readouterr().err


def test_every_setting_is_a_flag_and_quick_keeps_its_counts():
    from experiments.libero_transfer.__main__ import parse_settings

    _, settings, _ = parse_settings(["--quick", "--teacher-steps", "7", "--student-tasks", "none", "--ablations"])
    assert settings.teacher_steps == 7 and settings.student_tasks == () and settings.student_steps == 60
    assert settings.ablations == ("no_specialized", "no_generalized", "no_auxiliary_loss")
    _, settings, _ = parse_settings(["--no-future-residual", "--teacher-tasks", "0,5", "--ckt-lr", "1e-3"])
    assert not settings.future_residual and settings.teacher_tasks == (0, 5) and settings.ckt_lr == 1e-3
    assert settings.teacher_steps == 1200  # not --quick: the full run's
    _, settings, _ = parse_settings(["--workers", "-3", "--adapter-seed", "2"])
    assert settings.workers == 0 and settings.adapter_seed == 2
    assert parse_settings([])[1] == TransferSettings()
    assert parse_settings(["--quick"])[1] == TransferSettings.quick()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--eval-episodes", "0"], "eval_episodes must be >= 1"),
        (["--adapter-seed", "-1"], "adapter_seed must be >= 0"),
        (["--teacher-layer", "9"], "teacher_layer=9"),
        (["--eval-tasks", "a,b"], "comma-separated integers"),
    ],
)
def test_bad_flags_end_with_a_usage_error_naming_the_setting(argv, message, capsys):
    from experiments.libero_transfer.__main__ import parse_settings

    with pytest.raises(SystemExit):
        parse_settings(argv)
    assert message in capsys.readouterr().err
