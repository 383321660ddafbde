"""The world action model in LIBERO: `peft-ckt eval-libero --policy` on a saved WAM and on a student + CKT adapter
(tiny models, short episodes), and collection with an image stride."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import get_peft_model

from peft_ckt.libero.runtime import libero_import_error

pytestmark = [
    pytest.mark.libero,
    pytest.mark.skipif(
        libero_import_error() is not None, reason=f"libero extra not importable: {libero_import_error()}"
    ),
]


def test_eval_libero_runs_a_wam_and_a_student_with_ckt(tmp_path):
    from test_wam import ckt_pair

    from peft_ckt.commands import main

    teacher, student, config = ckt_pair(tmp_path)
    get_peft_model(student, config).save_pretrained(tmp_path / "ckt")
    for name, policy in (("wam", tmp_path / "teacher"), ("ckt", tmp_path / "ckt")):
        out = tmp_path / f"eval-{name}"
        code = main(
            ["eval-libero", "--suite", "libero_object", "--tasks", "0", "--episodes", "1", "--policy", str(policy),
             "--perturbation", "light", "--max-steps", "10", "--workers", "0", "--output", str(out), "--no-progress"]
        )  # fmt: skip
        assert code == 0
        results = json.loads((out / "results.json").read_text())
        episode = results["episodes"][0]
        assert episode["steps"] == 10 and episode["perturbation"] == "light"
        assert results["summary"]["by_perturbation"]["light"]["episodes"] == 1


def test_collect_with_an_image_stride_holds_frames_between_renders(tmp_path):
    from peft_ckt.commands import main
    from peft_ckt.wam.data import ChunkDataset, read_episodes

    out = tmp_path / "demos"
    code = main(
        ["collect-libero", "--suite", "libero_object", "--tasks", "0", "--episodes", "1", "--max-steps", "9",
         "--keep-failures", "--image-size", "16", "--image-stride", "4", "--workers", "0", "--output", str(out),
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    (episode,) = read_episodes(out)
    images = episode["wrist_image"]
    assert episode["image_stride"] == 4 and len(images) == 9
    assert all(np.array_equal(images[i], images[0]) for i in (1, 2, 3))
    assert all(np.array_equal(images[i], images[4]) for i in (5, 6, 7))
    assert not np.array_equal(images[8], images[7])  # the last frame is always rendered
    dataset = ChunkDataset([episode], chunk_size=16)
    assert dataset.sample_rows.tolist() == [0, 4, 8]
    assert torch.equal(
        dataset.batch(torch.tensor([0]))["future.images.image"][0], torch.from_numpy(episode["image"][8])
    )


def test_demo_evaluation_appends_episodes_and_resumes(tmp_path, monkeypatch):
    import dataclasses

    from test_wam import tiny_wam

    from experiments.libero_transfer.settings import DemoSettings
    from experiments.libero_transfer.stages.rollouts import evaluate_policies

    tiny_wam("cosmos").save_pretrained(tmp_path / "student")
    settings = dataclasses.replace(DemoSettings.quick(), eval_tasks=(0,), eval_max_steps=3, workers=0, image_size=16)
    policies = {"student": str(tmp_path / "student")}
    out = tmp_path / "eval"
    out.mkdir()
    rows = evaluate_policies(settings, policies, out, progress=False)
    assert len(rows) == 8 and {r["perturbation"] for r in rows} >= {"none", "camera", "layout"}
    lines = (out / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 8
    # Interrupted after 5 episodes: the rerun runs the 3 missing ones only, and records the same results.
    (out / "episodes.jsonl").write_text("\n".join(lines[:5]) + "\n")
    again = evaluate_policies(settings, policies, out, progress=False)
    resumed = (out / "episodes.jsonl").read_text().splitlines()
    assert len(resumed) == 8 and resumed[:5] == lines[:5]
    key = lambda r: (r["perturbation"], r["init_index"])  # noqa: E731
    assert sorted((key(r), r["steps"], r["success"]) for r in again) == sorted(
        (key(r), r["steps"], r["success"]) for r in rows
    )
    # More episodes per condition keep the recorded ones and run the new init states only; fewer report a subset.
    more = evaluate_policies(dataclasses.replace(settings, eval_episodes=2), policies, out, progress=False)
    log = (out / "episodes.jsonl").read_text().splitlines()
    assert len(more) == 16 and len(log) == 16 and log[:8] == resumed
    assert {r["init_index"] for r in more} == {settings.eval_init_offset, settings.eval_init_offset + 1}
    assert len(evaluate_policies(settings, policies, out, progress=False)) == 8
    # The same folder spelled relative to the working directory (a relative `--cache`) replays nothing.
    monkeypatch.chdir(tmp_path)
    assert len(evaluate_policies(settings, {"student": "student"}, out, progress=False)) == 8
    assert (out / "episodes.jsonl").read_text().splitlines() == log
