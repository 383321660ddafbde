"""The pre-registered experiment (`make experiment`): its plan from the registered values, split enforcement, the
paired analysis on rows with known answers, the control policies, and one toy run through every stage in LIBERO."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from experiments.libero_transfer.analysis import analyse, holm, policy_id
from experiments.libero_transfer.experiment import TINY, committed_teacher
from experiments.libero_transfer.plan import (
    collection_groups,
    demo_sets,
    question_values,
    trainings,
    tuning_candidates,
    wrong_instructions,
)
from experiments.libero_transfer.protocol import ProtocolMismatchError
from peft_ckt.libero.splits import SplitViolationError


def test_the_registered_plan_reads_each_split_for_its_purpose_and_collects_each_demonstration_once():
    q1, q2 = question_values("Q1"), question_values("Q2")
    sets = demo_sets(q1)
    assert all(i in range(0, 30) for name in ("teacher_clean", "student", "target") for i in sets[name].inits)
    assert sets["validation"].inits == (30, 31) and sets["validation"].split == "validation"
    assert set(sets["teacher_perturbed"].kinds) == {"camera", "robot", "light", "background", "noise"}
    assert sets["teacher_perturbed"].severity == 2 and sets["validation"].severity == 3
    groups = collection_groups({"Q1": q1, "Q2": q2})
    sizes = {g["split"] + str(g["severity"]): len(g["episodes"]) for g in groups.values()}
    # Clean: 10 tasks x inits 0-2 (teacher) + Q1 student E x 3-4 + Q2 student 4-9 x 3-4 + target E x 5-7 = 62.
    assert sizes == {"train0": 62, "train2": 100, "validation3": 64}
    assert len(trainings(q1)) == 6 and len(trainings(q1, controls=True)) == 3
    assert len(tuning_candidates(q1, "ckt")) == len(tuning_candidates(q1, "lora")) == 4


def test_a_set_drawn_from_test_init_states_is_refused():
    with pytest.raises(SplitViolationError, match="validation init states 30-39 only"):
        demo_sets(question_values("Q1", {"data": {"validation": {"inits": [40, 41]}}}))
    with pytest.raises(SplitViolationError, match="the target demonstrations"):
        demo_sets(question_values("Q1", {"data": {"target": {"init_offset": 45}}}))


def test_the_wrong_instruction_control_never_feeds_a_task_its_own_instruction():
    instructions = {t: f"instruction {t}" for t in range(10)}
    mapping = wrong_instructions(instructions, [0, 1, 2, 3])
    assert sorted(mapping) == sorted(mapping.values()) == [f"instruction {t}" for t in range(4)]
    assert all(source != target for source, target in mapping.items())


def test_a_run_with_other_settings_is_refused_unless_exploratory(tmp_path):
    from experiments.libero_transfer.experiment import main, run_experiment

    with pytest.raises(ProtocolMismatchError, match="ckt.steps"):
        run_experiment(["Q1"], tmp_path, overrides={"ckt": {"steps": 10}})
    with pytest.raises(SystemExit):
        main(["--tiny", "--output", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # refused before anything was written


def _rows(policy, training, outcomes, kinds=("none", "camera")):
    """One row per (task, init, kind) in a fixed order, successes from `outcomes`."""
    keys = [(t, i, k) for t in (0, 1) for i in (40, 41) for k in kinds]
    return [
        {"policy_id": f"{policy}@{training}", "task_id": t, "init_index": i, "perturbation": k, "success": bool(s)}
        for (t, i, k), s in zip(keys, outcomes)
    ]


def test_the_primary_comparison_pairs_trainings_and_gives_the_exact_mcnemar_p():
    values = question_values("Q1")
    rng = np.random.default_rng(0)
    rows, first_only, second_only = [], 0, 0
    for p in (0, 1):
        rows += _rows("teacher", f"p{p}", [1] * 8) + _rows("student", f"p{p}", [0, 0] * 4)
        for a in (0, 1, 2):
            ckt, lora = rng.integers(0, 2, 8), rng.integers(0, 2, 8)
            rows += _rows("student+ckt", f"p{p}a{a}", ckt) + _rows("student+lora", f"p{p}a{a}", lora)
            perturbed = slice(1, None, 2)  # the "camera" rows
            first_only += int(np.sum((ckt[perturbed] == 1) & (lora[perturbed] == 0)))
            second_only += int(np.sum((ckt[perturbed] == 0) & (lora[perturbed] == 1)))
    result = analyse(values, rows, resamples=200)
    primary = result["primary"]
    assert primary["episodes"] == 6 * 4  # Q1: the perturbed episodes only, 4 per training
    assert (primary["first_only"], primary["second_only"]) == (first_only, second_only)
    expected = 1.0 if first_only + second_only == 0 else binomtest(first_only, first_only + second_only).pvalue
    assert primary["mcnemar_p"] == pytest.approx(expected)
    assert primary["trainings"] == [f"p{p}a{a}" for p in (0, 1) for a in (0, 1, 2)]
    # The student (one row per pretraining seed) pairs with each adapter training of its seed.
    assert result["secondary"]["student+ckt vs student"]["episodes"] == 24
    assert result["rows"]["student+ckt"]["num_trainings"] == 6
    # No CNN row: the manipulation check cannot pass, and says so.
    assert result["manipulation_check"]["passed"] is None


def test_a_clear_lead_is_positive_and_no_headroom_is_inconclusive():
    values = question_values("Q1")
    rows = []
    for a in (0, 1, 2):
        # LoRA succeeds clean (it must, for the manipulation check) and fails every perturbed episode.
        rows += _rows("student+ckt", f"p0a{a}", [1] * 8) + _rows("student+lora", f"p0a{a}", [1, 0] * 4)
    rows += _rows("teacher", "p0", [1] * 8) + _rows("student", "p0", [0] * 8) + _rows("cnn", "c0", [1] * 8)
    result = analyse(values, rows, resamples=200)
    assert result["primary"]["mcnemar_p"] == pytest.approx(binomtest(12, 12).pvalue)
    assert result["primary"]["bootstrap_ci95"] == [1.0, 1.0]
    assert result["primary"]["decision"] == "positive"
    assert result["primary"]["transfer_efficiency"] == 1.0
    assert result["primary"]["transfer_efficiency_ci95"] == [1.0, 1.0]
    # LoRA recovers none of the teacher's perturbed lead; each adapter is matched with its own student and teacher.
    lora = result["transfer_efficiency"]["student+lora"]
    assert (lora["estimate"], lora["ci95"], lora["episodes"], lora["trainings"]) == (
        0.0,
        [0.0, 0.0],
        12,
        ["p0a0", "p0a1", "p0a2"],
    )
    no_headroom = [r for r in rows if not r["policy_id"].startswith("teacher")] + _rows("teacher", "p0", [0] * 8)
    assert analyse(values, no_headroom, resamples=200)["primary"]["decision"].startswith("inconclusive")
    # Before the CNN row is played, a failed criterion already fails the check; the others leave it open.
    no_cnn = [r for r in no_headroom if not r["policy_id"].startswith("cnn")]
    result = analyse(values, no_cnn, resamples=200)
    assert result["manipulation_check"]["passed"] is False
    assert result["primary"]["decision"].startswith("inconclusive")
    headroom_no_cnn = [r for r in rows if not r["policy_id"].startswith("cnn")]
    assert analyse(values, headroom_no_cnn, resamples=200)["manipulation_check"]["passed"] is None


def test_the_report_markdown_gives_efficiency_and_the_per_kind_counts():
    from experiments.libero_transfer.experiment import markdown

    values = question_values("Q1")
    rows = _rows("teacher", "p0", [1] * 8) + _rows("student", "p0", [0] * 8)
    for a in (0, 1, 2):
        rows += _rows("student+ckt", f"p0a{a}", [1] * 8) + _rows("student+lora", f"p0a{a}", [1, 0] * 4)
    result = {**analyse(values, rows, resamples=100), "exploratory": False}
    result["inference_time"] = {
        "ratio_to_student": {"student": 1.0, "student+ckt": 1.3},
        "ratio_quartiles": {"student": [1.0, 1.0], "student+ckt": [1.25, 1.375]},
        "rounds": 200,
    }
    text = markdown({"exploratory": False, "phases_done": ["primary"], "questions": {"Q1": result}})
    assert "median over 200 interleaved rounds" in text and "student+ckt 1.30x [1.25, 1.38]" in text
    assert "- student+ckt vs student+lora, teacher's kinds: +100.0 points over 12 pairs" in text
    assert "Transfer efficiency of student+ckt: 1.00, 95% bootstrap interval [1.00, 1.00], over 12" in text
    assert "| policy | camera | none |" in text
    assert "| student+lora | 0/12 | 12/12 |" in text


def test_the_primary_pair_is_compared_on_held_out_kinds_on_the_teachers_kinds_and_clean():
    from experiments.libero_transfer.analysis import kind_groups

    values = question_values("Q1")
    assert kind_groups(values) == {
        "held-out kinds": ["language", "layout"],
        "teacher's kinds": ["camera", "robot", "light", "background", "noise"],
        "clean": ["none"],
    }
    kinds = ("none", "camera", "language")  # 4 start states x 3 kinds per training
    rows = _rows("teacher", "p0", [1] * 12, kinds) + _rows("student", "p0", [0] * 12, kinds)
    for a in (0, 1, 2):
        # CKT succeeds under "language" only; LoRA clean and under "camera" only.
        rows += _rows("student+ckt", f"p0a{a}", [0, 0, 1] * 4, kinds)
        rows += _rows("student+lora", f"p0a{a}", [1, 1, 0] * 4, kinds)
    result = analyse(values, rows, resamples=100)
    held_out = result["secondary"]["student+ckt vs student+lora, held-out kinds"]
    taught = result["secondary"]["student+ckt vs student+lora, teacher's kinds"]
    clean = result["secondary"]["student+ckt vs student+lora, clean"]
    assert (held_out["episodes"], held_out["first_only"], held_out["second_only"]) == (12, 12, 0)
    assert (taught["episodes"], taught["first_only"], taught["second_only"]) == (12, 0, 12)
    assert (clean["episodes"], clean["first_only"], clean["second_only"]) == (12, 0, 12)
    assert held_out["kinds"] == ["language", "layout"] and held_out["difference"] == 1.0
    # Holm-corrected with the other secondaries (five comparisons here).
    assert len([c for c in result["secondary"].values() if "holm_p" in c]) == 5
    assert held_out["holm_p"] >= held_out["mcnemar_p"]
    # The primary endpoint is unchanged by them: every perturbed episode, both kinds pooled.
    assert result["primary"]["episodes"] == 24 and result["primary"]["difference"] == 0.0


def test_the_official_sample_gets_the_registered_fisher_test_and_the_matched_mcnemar():
    from scipy.stats import fisher_exact

    from experiments.libero_transfer.analysis import official_comparisons

    def official(policy, training, outcomes):
        return [
            {"policy_id": f"{policy}@{training}", "task": f"task-{i}", "dimension": "camera", "init_index": 0,
             "success": bool(s)}
            for i, s in enumerate(outcomes)
        ]  # fmt: skip

    rows = official("student", "p0", [0] * 6)
    rows += official("student+ckt", "p0a0", [1, 1, 1, 0, 0, 0]) + official("student+ckt", "p0a1", [1, 1, 0, 0, 0, 0])
    rows += official("student+lora", "p0a0", [0, 1, 0, 0, 0, 0]) + official("student+lora", "p0a1", [0, 0, 0, 1, 0, 0])
    rows.append({**rows[-1], "task": "task-6", "success": None, "error": {"type": "RuntimeError"}})
    result = official_comparisons(rows, resamples=100, seed=0)
    assert set(result) == {"student+ckt vs student+lora", "student+ckt vs student", "student+lora vs student"}
    ckt_lora = result["student+ckt vs student+lora"]
    assert ckt_lora["fisher"]["p_value"] == pytest.approx(fisher_exact([[5, 7], [2, 10]]).pvalue)
    assert ckt_lora["fisher"]["difference"] == pytest.approx(3 / 12)
    matched = ckt_lora["paired"]
    assert (matched["episodes"], matched["first_only"], matched["second_only"]) == (12, 4, 1)
    assert matched["mcnemar_p"] == pytest.approx(binomtest(4, 5).pvalue)
    # The student (one row per pretraining seed) pairs with each adapter training of its seed.
    assert result["student+ckt vs student"]["paired"]["episodes"] == 12


def test_holm_adjusts_step_down():
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})


def test_policy_ids():
    assert policy_id("student+ckt", 1, 2) == "student+ckt@p1a2"
    assert policy_id("teacher", 0) == "teacher@p0" and policy_id("cnn", cnn=2) == "cnn@c2"


def test_control_folders_play_the_ckt_adapter_with_another_instruction_or_zeroed_features(tmp_path):
    from peft import get_peft_model

    from peft_ckt.libero.policies import load_policy
    from peft_ckt.wam.data import ChunkDataset
    from peft_ckt.wam.policy import write_control_policy
    from tests.test_wam import INSTRUCTIONS, ckt_pair, fake_episodes

    teacher, student, config = ckt_pair(tmp_path)
    model = get_peft_model(student, config)
    torch.manual_seed(0)
    for p in model.parameters():  # a bank that is not at its (near-zero) initialisation
        if p.requires_grad:
            p.data.normal_(0, 0.3)
    model.save_pretrained(tmp_path / "ckt")
    batch = ChunkDataset(fake_episodes()).batch(torch.arange(1))
    observation = {
        "observation.images.image": batch["observation.images.image"][0].numpy(),
        "observation.images.wrist_image": batch["observation.images.wrist_image"][0].numpy(),
        "observation.state": batch["observation.state"][0].numpy(),
        "task": INSTRUCTIONS[0],
    }
    other = {INSTRUCTIONS[0]: INSTRUCTIONS[1]}
    write_control_policy(tmp_path / "wrong", tmp_path / "ckt", teacher_instructions=other)
    write_control_policy(tmp_path / "zero", tmp_path / "ckt", zero_teacher_features=True)
    assert json.loads((tmp_path / "wrong" / "config.json").read_text())["adapter"] == "../ckt"
    real, wrong, zero = (load_policy(tmp_path / name) for name in ("ckt", "wrong", "zero"))
    chunks = {}
    for name, policy in (("real", real), ("wrong", wrong), ("zero", zero)):
        policy.reset()
        chunks[name] = policy.predict_action_chunk(observation)
    assert not np.allclose(chunks["real"], chunks["wrong"]) and not np.allclose(chunks["real"], chunks["zero"])
    # The controls change the teacher's side only: the context is the adapter's on the other task's instruction
    # (the student still reads its own), or the bank run on zeros in the teacher features' shape.
    from peft_ckt.wam.policy import observation_to_wam_batch

    own, swapped = (observation_to_wam_batch({**observation, "task": t}) for t in INSTRUCTIONS)
    torch.testing.assert_close(wrong._context(own).tokens, real._context(swapped).tokens)
    features = real.model.extract_teacher_features(real._teacher().teacher_inputs(own))
    expected = real.model.encode_features(torch.zeros_like(features)).tokens
    torch.testing.assert_close(zero._context(own).tokens, expected)
    with pytest.raises(ValueError, match="unknown control field"):
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "config.json").write_text(json.dumps({"type": "wam", "adapter": "../ckt", "zero": 1}))
        load_policy(tmp_path / "bad")


@pytest.mark.libero
def test_a_toy_run_goes_through_every_stage_and_resumes_without_redoing_anything(tmp_path):
    """Q1 at toy counts in LIBERO: collection, pretraining, the equal tuning, both adapters at two adapter seeds, the
    rollouts and the report; a second run reuses every cached stage and plays no episode again."""
    pytest.importorskip("libero")
    from experiments.libero_transfer.experiment import PHASES, TINY, run_experiment

    overrides = json.loads(json.dumps(TINY))
    overrides["data"]["test"]["kinds"] = ["camera"]
    report = run_experiment(["Q1"], tmp_path, ["primary"], exploratory=True, overrides=overrides, progress=False)
    assert report["exploratory"] and report["protocol"]["Q1"]["exploratory"]
    q1 = report["questions"]["Q1"]
    assert set(q1["rows"]) == {"teacher", "student", "student+ckt", "student+lora"}
    assert q1["primary"]["episodes"] == 2 and q1["primary"]["trainings"] == ["p0a0", "p0a1"]
    timed = q1["inference_time"]  # interleaved rounds, each policy's ratio to the student with its quartiles
    assert set(timed["ratio_to_student"]) == {"student", "student+ckt", "student+lora"} and timed["rounds"] == 200
    assert timed["ratio_to_student"]["student"] == 1.0 and timed["ratio_quartiles"]["student"] == [1.0, 1.0]
    low, high = timed["ratio_quartiles"]["student+ckt"]
    assert 0 < low <= timed["ratio_to_student"]["student+ckt"] <= high
    assert len(q1["tuning"]["ckt"]["scores"]) == len(q1["tuning"]["lora"]["scores"]) == 2
    log = tmp_path / "rollouts" / "episodes.jsonl"
    played = log.read_text().count("\n")
    assert played == 6  # teacher, student and 2 x 2 adapters, one episode each
    again = run_experiment(["Q1"], tmp_path, ["primary"], exploratory=True, overrides=overrides, progress=False)
    assert log.read_text().count("\n") == played
    assert again["questions"]["Q1"]["primary"] == q1["primary"]
    # Moved to another output folder through a snapshot (as to another machine), the run resumes where it was.
    from experiments.libero_transfer.progress import restore, snapshot

    progress, moved = tmp_path.parent / f"{tmp_path.name}-progress", tmp_path.parent / f"{tmp_path.name}-moved"
    assert snapshot(tmp_path, progress) and restore(progress, moved)
    cached = {f: f.stat().st_mtime_ns for f in (moved / "cache").rglob("*") if f.is_file()}
    resumed = run_experiment(["Q1"], moved, ["primary"], exploratory=True, overrides=overrides, progress=False)
    resumed_log = (moved / "rollouts" / "episodes.jsonl").read_text()
    assert resumed_log == log.read_text().replace(str(tmp_path), str(moved))  # no episode played again
    assert {f: f.stat().st_mtime_ns for f in cached} == cached  # nothing collected or trained again
    assert resumed["questions"]["Q1"]["primary"] == q1["primary"]
    assert resumed["timing_all_sessions"]["sessions"] == 3  # the ledger came along
    assert (tmp_path / "report.md").read_text().startswith("# Pre-registered LIBERO transfer experiment")
    assert not (tmp_path / "controls_Q1.png").exists()  # no control row yet
    # Publishing copies the report, the plot and the episode log; an exploratory run only when asked for.
    from experiments.libero_transfer.experiment import publish

    with pytest.raises(ValueError, match="exploratory"):
        publish(tmp_path, tmp_path / "published")
    copied = publish(tmp_path, tmp_path / "published", allow_exploratory=True)
    assert copied == ["report.json", "report.md", "success_Q1.png", "timing.json", "rollouts/episodes.jsonl"]
    assert again["timing_all_sessions"]["sessions"] == 2  # both invocations, in timing.json
    assert (tmp_path / "published" / "rollouts" / "episodes.jsonl").read_text() == log.read_text()

    log_before_later = log.read_text()

    # The demo's path: the run's teacher, published and loaded into a new run, stands in for pretraining it (its
    # demonstrations are not collected); the same seeds then give the same adapters and the same episodes.
    from experiments.libero_transfer.experiment import publish_teacher, publish_tuning

    shipped = publish_teacher(tmp_path, tmp_path / "teacher", overrides)
    tuning = json.loads(publish_tuning(tmp_path, tmp_path / "tuning.json").read_text())
    assert tuning["Q1"]["ckt"]["chosen"] == q1["tuning"]["ckt"]["chosen"] and set(tuning["Q1"]) == {"ckt", "lora"}
    demo = run_experiment(
        ["Q1"], tmp_path / "demo", ["primary"], exploratory=True, overrides=overrides, progress=False,
        teacher=shipped,
    )  # fmt: skip
    assert f"committed in {shipped}" in demo["teacher"] and "pretrained in this run" in report["teacher"]

    def train_folders(output: Path) -> dict[str, int]:  # demonstrations of the training split, per severity
        return {
            f.name.split("-")[1]: len((f / "meta" / "episodes.jsonl").read_text().splitlines())
            for f in (output / "cache" / "data").glob("train-*")
        }

    ran, shipped_run = train_folders(tmp_path), train_folders(tmp_path / "demo")
    assert set(ran) == {"s0", "s2"} and set(shipped_run) == {"s0"}  # no perturbed teacher demonstrations
    assert shipped_run["s0"] < ran["s0"]  # nor the teacher's clean ones of other tasks
    teachers = sorted(f.name for f in (tmp_path / "demo" / "cache" / "models").glob("teacher-*"))
    assert teachers == [Path(q1["policies"]["teacher@p0"]).name]
    assert demo["questions"]["Q1"]["primary"] == q1["primary"]
    for pid in ("student+ckt@p0a0", "student+lora@p0a1"):
        ours, theirs = Path(q1["policies"][pid]), Path(demo["questions"]["Q1"]["policies"][pid])
        assert (ours / "adapter_model.safetensors").read_bytes() == (theirs / "adapter_model.safetensors").read_bytes()
    # With other settings than the published teacher's, the teacher is pretrained and the report says why.
    other = json.loads(json.dumps(overrides))
    other["models"]["teacher"]["steps"] += 1
    _, why = committed_teacher(question_values("Q1", other), shipped)
    assert "other settings" in why

    # The later phases on the same folder, at toy counts (a trained and an inference-only control, one CNN seed, one
    # official task): the primary stages are reused, every row reaches the report with its comparisons.
    later = json.loads(json.dumps(overrides))
    later["controls"] = ["kv_only", "ckt_zero_features"]
    later["official_liberoplus"] = {"sample": 1}
    full = run_experiment(["Q1"], tmp_path, list(PHASES), exploratory=True, overrides=later, progress=False)
    assert log.read_text().startswith(log_before_later)  # the primary episodes are not played again
    q1_full = full["questions"]["Q1"]
    assert full["phases_done"] == list(PHASES) and q1_full["primary"] == q1["primary"]
    assert {"kv_only", "ckt_zero_features", "cnn"} <= set(q1_full["rows"])
    assert q1_full["secondary"]["ckt_zero_features vs student+ckt"]["episodes"] == 2
    official = q1_full["official_liberoplus"]
    assert len(official["tasks"]) == 1 and set(official["rows"]) == {
        "teacher",
        "student",
        "student+ckt",
        "student+lora",
    }
    assert official["comparisons"]["student+ckt vs student+lora"]["paired"]["episodes"] == 2
    assert "Official LIBERO-Plus sample" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "controls_Q1.png").stat().st_size > 0  # drawn once a control row exists


def test_the_committed_teacher_is_the_registered_one_and_is_checked(tmp_path):
    import shutil

    from experiments.libero_transfer.experiment import COMMITTED_TEACHER, DEMO
    from peft_ckt.wam.modeling import WorldActionModel

    demo = question_values("Q1", json.loads(json.dumps(DEMO)))
    for values in (demo, question_values("Q1"), question_values("Q2")):
        assert committed_teacher(values)[0] == COMMITTED_TEACHER
    teacher = WorldActionModel.from_pretrained(COMMITTED_TEACHER)
    assert teacher.backbone_type == "wan" and len(teacher.backbone.blocks) == demo["models"]["teacher"]["layers"]
    assert committed_teacher(question_values("Q1", json.loads(json.dumps(TINY))))[0] is None
    assert "no committed teacher" in committed_teacher(demo, tmp_path / "absent")[1]
    tampered = tmp_path / "tampered"
    shutil.copytree(COMMITTED_TEACHER, tampered)
    weights = bytearray((tampered / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (tampered / "model.safetensors").write_bytes(bytes(weights))
    assert committed_teacher(demo, tampered) == (
        None,
        f"{tampered / 'model.safetensors'} does not match the checksum in plan.json",
    )


def test_demo_flags_are_checked_before_anything_runs(tmp_path, capsys):
    from experiments.libero_transfer.experiment import COMMITTED_REPORT, COMMITTED_TUNING, demo_tuning, main

    for argv, message in (
        (["--quick"], "--quick goes with --demo"),
        (["--demo", "--tiny"], "--demo has its own settings"),
        (["--pretrain-teacher"], "--pretrain-teacher goes with --demo"),
        (["--workers", "0", "--exploratory"], "--workers must be >= 1"),
        (["--train-workers", "0"], "--train-workers must be >= 1"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--output", str(tmp_path)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    # The demo takes the setting the committed experiment chose on validation (its report, or before the report the
    # tuning committed for the demo); before either exists, the first registered candidate, and it says so.
    chosen = demo_tuning(question_values("Q1"))
    if COMMITTED_REPORT.is_file() or COMMITTED_TUNING.is_file():
        assert "committed experiment" in chosen["ckt"][1]
        if not COMMITTED_REPORT.is_file():
            committed = json.loads(COMMITTED_TUNING.read_text())["Q1"]
            assert {m: chosen[m][0] for m in chosen} == {m: committed[m]["chosen"] for m in ("ckt", "lora")}
    else:
        assert chosen["ckt"][0] == tuning_candidates(question_values("Q1"), "ckt")[0]
        assert "first registered candidate" in chosen["ckt"][1]


def test_an_episode_that_raised_is_neither_a_success_nor_a_failure_and_leaves_its_pair_out():
    values = question_values("Q1")
    rows = _rows("student+ckt", "p0a0", [1] * 8) + _rows("student+lora", "p0a0", [0] * 8)
    broken = next(r for r in rows if r["policy_id"].startswith("student+lora") and r["perturbation"] == "camera")
    broken.update(success=None, error={"type": "IndexError", "message": "index 223 is out of bounds"})
    result = analyse(values, rows, resamples=50)
    assert result["primary"]["episodes"] == 3 and result["primary"]["pairs_with_errors"] == 1
    lora = result["rows"]["student+lora"]["pooled"]
    assert lora["errors"] == 1 and lora["perturbed"]["episodes"] == 3 and lora["all"]["episodes"] == 7
    # The transfer efficiency leaves out an episode that raised for the teacher (its triple has no outcome).
    teacher = _rows("teacher", "p0", [1] * 8)
    teacher[1].update(success=None, error={"type": "IndexError", "message": "index 223 is out of bounds"})
    result = analyse(values, rows + teacher + _rows("student", "p0", [0] * 8), resamples=50)
    ckt = result["transfer_efficiency"]["student+ckt"]
    assert (ckt["episodes"], ckt["episodes_with_errors"], ckt["estimate"]) == (3, 1, 1.0)


def test_status_counts_the_plan_the_protocol_budgets(tmp_path, capsys):
    from experiments.libero_transfer.experiment import main

    assert main(["--status", "--output", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # docs/protocol.md, "Budget": 3,840 primary + 5,760 control + 384 CNN rollouts, and 720 official episodes.
    assert "rollouts: 0/9984" in lines and "official episodes: 0/720" in lines
    assert "models: 0/6" in lines and "tuning: 0/4" in lines
    assert not any(tmp_path.iterdir())  # a status reads; it writes nothing


def test_adapter_trainings_in_two_workers_give_the_floats_of_one_after_the_other(tmp_path):
    """`make experiment` trains adapters two at a time in spawned workers: each training is seeded on its own and
    runs one thread, so the weights are those of training them here in turn; trained ones are not trained again."""
    from safetensors.torch import load_file

    from experiments.libero_transfer import protocol_stages as stages
    from experiments.libero_transfer.experiment import TINY
    from tests.test_wam import ckt_pair, fake_episodes

    ckt_pair(tmp_path)  # saves a tiny teacher and student
    values = question_values("Q1", json.loads(json.dumps(TINY)))
    values["ckt"].update(num_attention_heads=2, bottleneck_dim=8, router_hidden_dim=8)
    target = [{**e, "task_id": i, "perturbation": "none"} for i, e in enumerate(fake_episodes(2, length=24))]

    def jobs(cache):
        return [
            stages.AdapterJob(
                values,
                cache,
                kind,
                hyper,
                tmp_path / "teacher" if kind == "ckt" else None,
                tmp_path / "student",
                target,
                (0, a),
                1000,
            )  # fmt: skip
            for kind, hyper, a in (
                ("ckt", {"learning_rate": 1e-3, "teacher_layer": 1}, 0),
                ("ckt", {"learning_rate": 1e-3, "teacher_layer": 1}, 1),
                ("lora", {"learning_rate": 1e-3, "rank_multiple": 1}, 0),
            )  # fmt: skip
        ]

    assert stages.train_adapters(jobs(tmp_path / "here"), workers=1, progress=False) == 3
    assert stages.train_adapters(jobs(tmp_path / "pool"), workers=2, progress=False) == 3
    assert stages.train_adapters(jobs(tmp_path / "pool"), workers=2, progress=False) == 0
    for here, pool in zip(jobs(tmp_path / "here"), jobs(tmp_path / "pool")):
        assert here.folder.name == pool.folder.name
        a, b = (load_file(job.folder / "adapter_model.safetensors") for job in (here, pool))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = load_file(jobs(tmp_path / "pool")[0].folder / "adapter_model.safetensors")
    second = load_file(jobs(tmp_path / "pool")[1].folder / "adapter_model.safetensors")
    assert any(not torch.equal(first[k], second[k]) for k in first)  # adapter seeds 0 and 1 differ


def test_the_time_ledger_sums_sessions_and_keeps_a_killed_sessions_count(tmp_path):
    """`timing.json` holds one entry per invocation; one killed with SIGKILL keeps what its minute writer saved."""
    import signal
    import subprocess
    import sys
    import time

    from experiments.libero_transfer.ledger import TimeLedger

    path = tmp_path / "timing.json"
    first = TimeLedger(path).start()
    first.update({"collect": 5.0})
    first.close()
    script = (
        "import sys, time; from pathlib import Path; from experiments.libero_transfer.ledger import TimeLedger; "
        f"ledger = TimeLedger(Path({str(path)!r}), every=0.1).start(); ledger.update({{'trainings': 2.0}}); "
        "print('ready', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # a few minute-writer ticks (every 0.1 s here)
    child.send_signal(signal.SIGKILL)
    child.wait()
    sessions = json.loads(path.read_text())["sessions"]
    assert len(sessions) == 2 and sessions[1]["seconds"]["trainings"] == 2.0
    assert sessions[1]["seconds"]["total"] >= 0.3  # counted up to its last tick, not lost with the kill
    totals = TimeLedger(path).totals()
    assert totals["sessions"] == 2 and totals["seconds"]["collect"] == 5.0 and totals["seconds"]["trainings"] == 2.0
    assert json.loads(path.read_text())["sessions"] == sessions  # reading the totals rewrites nothing
    running = TimeLedger(path).start()
    time.sleep(0.3)
    now = running.totals()
    running.close()
    assert now["sessions"] == 3 and now["this_session"] >= 0.3  # this session's seconds up to the call


def test_a_snapshot_holds_finished_work_only_and_restores_what_an_output_lacks(tmp_path, caplog):
    """`--snapshot` / `--restore`: whole units, never a staging folder, a checkpoint or a torn episode line; a second
    snapshot copies only what changed; a restore keeps what the output wrote itself."""
    from experiments.libero_transfer.progress import DESCRIPTION, pending, restore, snapshot

    run = tmp_path / "run"
    teacher = run / "cache" / "models" / "teacher-p0-abc"
    teacher.mkdir(parents=True)
    (teacher / "model.safetensors").write_bytes(b"\x00weights")
    (teacher / "training.json").write_text('{"losses": [1.0]}')
    (run / "cache" / "models" / "student-p0-def.partial").mkdir()
    (run / "cache" / "models" / "student-p0-def.partial" / "model.safetensors").write_bytes(b"half")
    (run / "cache" / "models" / "student-p0-def.ckpt").write_bytes(b"optimiser state")
    adapter = run / "cache" / "adapters" / "ckt-p0a0-ghi"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(teacher)}))
    (run / "cache" / "tuning").mkdir()
    (run / "cache" / "tuning" / "Q1-ckt-1.json").write_text("{}")
    (run / "rollouts").mkdir()
    (run / "rollouts" / "eval_config.json").write_text("{}")
    log = run / "rollouts" / "episodes.jsonl"
    log.write_text('{"success": true}\n{"success": false}\n{"succ')  # the run is writing its third record
    (run / "timing.json").write_text('{"sessions": []}')

    progress = tmp_path / "progress"
    copied = snapshot(run, progress)
    assert copied == [
        "cache/adapters/ckt-p0a0-ghi", "cache/models/teacher-p0-abc", "cache/tuning/Q1-ckt-1.json", "rollouts",
        "timing.json",
    ]  # fmt: skip
    # Paths into the run's folder are held relative to a placeholder: the snapshot restores into any folder.
    config = json.loads((progress / "cache" / "adapters" / "ckt-p0a0-ghi" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "${EXPERIMENT_OUTPUT}/cache/models/teacher-p0-abc"
    assert sorted(p.name for p in (progress / "cache" / "models").iterdir()) == ["teacher-p0-abc"]
    assert (progress / "rollouts" / "episodes.jsonl").read_text() == '{"success": true}\n{"success": false}\n'
    assert "make experiment-snapshot" in (progress / DESCRIPTION).read_text()
    assert snapshot(run, progress) == [] and pending(run, progress) == []  # nothing changed
    log.write_text('{"success": true}\n{"success": false}\n{"success": true}\n')
    assert pending(run, progress) == ["rollouts"]
    from experiments.libero_transfer.experiment import status

    assert status(run, {"Q1": question_values("Q1")}, progress)[-1].endswith("1 unit(s): rollouts")
    assert snapshot(run, progress) == ["rollouts"] and pending(run, progress) == []

    moved = tmp_path / "elsewhere"
    (moved / "cache").mkdir(parents=True)
    (moved / "timing.json").write_text('{"sessions": [{"seconds": {"total": 3.0}}]}')  # this output's own run
    with caplog.at_level("INFO"):
        restored = restore(progress, moved)
    assert restored == ["cache/adapters/ckt-p0a0-ghi", "cache/models/teacher-p0-abc", "cache/tuning/Q1-ckt-1.json",
                        "rollouts"]  # fmt: skip
    config = json.loads((moved / "cache" / "adapters" / "ckt-p0a0-ghi" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(moved / "cache" / "models" / "teacher-p0-abc")
    assert "kept 1 unit(s)" in caplog.text and caplog.text.rstrip().endswith("timing.json")
    assert json.loads((moved / "timing.json").read_text())["sessions"][0]["seconds"]["total"] == 3.0
    assert (moved / "rollouts" / "episodes.jsonl").read_text() == log.read_text()
    assert (moved / "cache" / "models" / "teacher-p0-abc" / "model.safetensors").read_bytes() == b"\x00weights"
    assert not (moved / DESCRIPTION).exists() and not list(moved.rglob("*.partial"))
    assert restore(progress, moved) == []

    # The command line: `make experiment-snapshot`, `make experiment`'s restore, and a clear refusal of both at once.
    from experiments.libero_transfer.experiment import main

    log.write_text(log.read_text() + '{"success": false}\n')
    assert main(["--output", str(run), "--snapshot", str(progress)]) == 0
    assert (progress / "rollouts" / "episodes.jsonl").read_text().count("\n") == 4
    again = tmp_path / "again"
    assert main(["--output", str(again), "--restore", str(progress), "--status"]) == 0
    assert (again / "rollouts" / "episodes.jsonl").read_text().count("\n") == 4
    with pytest.raises(SystemExit) as exit_info:
        main(["--output", str(run), "--snapshot", str(progress), "--restore", str(progress)])
    assert exit_info.value.code == 2

    with pytest.raises(ValueError, match="no cache"):
        snapshot(tmp_path / "empty", progress)
    with pytest.raises(ValueError, match="not a snapshot"):
        restore(tmp_path, moved)
