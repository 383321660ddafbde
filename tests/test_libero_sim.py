"""LIBERO environment, LIBERO-Plus perturbations and the scripted expert, on the real simulator."""

from __future__ import annotations

import numpy as np
import pytest

from peft_ckt.libero.runtime import libero_import_error

pytestmark = [
    pytest.mark.libero,
    pytest.mark.skipif(
        libero_import_error() is not None, reason=f"libero extra not importable: {libero_import_error()}"
    ),
]


@pytest.fixture(scope="module")
def env():
    from peft_ckt.libero.env import LiberoEnv

    environment = LiberoEnv("libero_object", 0, image_size=64, privileged=True, seed=0)
    yield environment
    environment.close()


@pytest.fixture(scope="module")
def baseline(env):
    from peft_ckt.libero.perturbations import Perturbation

    env.perturbation = Perturbation("none")
    env.render_images = True
    return env.reset(0)


def _image_diff(a: dict, b: dict) -> float:
    key = "observation.images.image"
    return float(np.abs(a[key].astype(np.float32) - b[key].astype(np.float32)).mean())


def _object_shift(a: dict, b: dict) -> float:
    objects = a["privileged"]["objects"]
    return max(float(np.abs(objects[n]["pos"] - b["privileged"]["objects"][n]["pos"]).max()) for n in objects)


def test_config_written_offline(env):
    import os
    from pathlib import Path

    from peft_ckt.libero.runtime import configure_libero

    paths = configure_libero()
    assert (Path(os.environ["LIBERO_CONFIG_PATH"]) / "config.yaml").is_file()
    assert (paths.assets / "scenes").is_dir()
    assert os.environ["MUJOCO_GL"] in ("egl", "osmesa")


def test_reset_and_step(env, baseline):
    obs = baseline
    assert obs["observation.state"].shape == (8,) and obs["observation.state"].dtype == np.float32
    for key in ("observation.images.image", "observation.images.wrist_image"):
        assert obs[key].shape == (64, 64, 3) and obs[key].dtype == np.uint8
        assert obs[key].std() > 5  # a real rendered scene, not a blank frame
    assert obs["task"] == "pick up the alphabet soup and place it in the basket"
    assert env.max_steps == 280
    assert set(obs["privileged"]["objects"]) >= {"alphabet_soup_1", "basket_1"}
    start = obs["observation.state"][:3].copy()
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(np.array([0, 0, 1.0, 0, 0, 0, -1]))
    assert obs["observation.state"][2] > start[2] + 0.02  # +z delta actions lift the end effector
    assert env.num_steps == 5 and not terminated and not truncated and info["is_success"] is False
    with pytest.raises(ValueError, match="7-D action"):
        env.step(np.zeros(6))


def test_upright_agent_view(env, baseline):
    # MuJoCo's OpenGL rows run bottom-up; the env flips them so that row 0 is the top of the picture.
    raw = env.sim.render(width=64, height=64, camera_name="agentview")
    np.testing.assert_array_equal(env.render("image"), raw[::-1])
    assert not np.array_equal(raw, raw[::-1])


@pytest.mark.parametrize("kind", ["camera", "light", "background", "noise"])
def test_visual_perturbations_change_the_image(env, baseline, kind):
    from peft_ckt.libero.perturbations import Perturbation

    env.perturbation = Perturbation(kind, 3)
    first = env.reset(0)
    again = env.reset(0)
    env.perturbation = Perturbation("none")
    assert _image_diff(first, baseline) > 3.0, f"{kind} left the agent view unchanged"
    if kind != "noise":  # scene perturbations are deterministic per (seed, task, init)
        assert _image_diff(first, again) < 0.5
    assert np.allclose(first["observation.state"], baseline["observation.state"], atol=1e-3)


def test_recording_frames_leaves_the_policys_noisy_views_unchanged(env):
    """Video frames draw their sensor noise from their own stream: an episode recorded with `--video` shows the
    policy the same noisy images, and so replays the episode evaluated without it."""
    from peft_ckt.libero.perturbations import Perturbation

    env.perturbation = Perturbation("noise", 3)
    try:
        plain = [env.reset(0)["observation.images.image"], env.render_observation()["observation.images.image"]]
        first = env.reset(0)["observation.images.image"]
        recorded = env.render("image", for_record=True)
        second = env.render_observation()["observation.images.image"]
    finally:
        env.perturbation = Perturbation("none")
    assert np.array_equal(first, plain[0]) and np.array_equal(second, plain[1])
    assert not np.array_equal(recorded, second)  # a noisy frame of its own, not a copy


def test_robot_perturbation_moves_the_arm(env, baseline):
    from peft_ckt.libero.perturbations import Perturbation

    env.perturbation = Perturbation("robot", 3)
    obs = env.reset(0)
    env.perturbation = Perturbation("none")
    assert np.abs(obs["observation.state"][:3] - baseline["observation.state"][:3]).max() > 0.01
    assert _image_diff(obs, baseline) > 0.5


def test_layout_perturbation_moves_objects(env, baseline):
    from peft_ckt.libero.perturbations import Perturbation

    env.perturbation = Perturbation("layout", 3)
    obs = env.reset(0)
    env.perturbation = Perturbation("none")
    assert _object_shift(obs, baseline) > 0.01
    assert _image_diff(obs, baseline) > 0.5


def test_language_perturbation_rewrites_instruction(env, baseline):
    from peft_ckt.libero.perturbations import Perturbation, rewrite_instruction

    env.perturbation = Perturbation("language", 3)
    obs = env.reset(0)
    env.perturbation = Perturbation("none")
    assert obs["task"] != baseline["task"]
    assert "alphabet soup" in obs["task"]  # the object of the task is still named
    rng = np.random.default_rng
    assert rewrite_instruction("open the drawer", 2, rng(1)) == rewrite_instruction("open the drawer", 2, rng(1))


def test_reset_restores_the_original_scene(env, baseline):
    from peft_ckt.libero.perturbations import Perturbation

    for kind in ("camera", "light", "background", "layout"):
        env.perturbation = Perturbation(kind, 5)
        env.reset(0)
    env.perturbation = Perturbation("none")
    assert _image_diff(env.reset(0), baseline) < 0.5


def test_perturbation_validation():
    from peft_ckt.libero.perturbations import Perturbation, expand_perturbations

    assert expand_perturbations("all") == ["camera", "robot", "language", "light", "background", "noise", "layout"]
    with pytest.raises(ValueError, match="Unknown perturbation"):
        Perturbation("fog")
    with pytest.raises(ValueError, match="severity"):
        Perturbation("camera", 9)


def test_scripted_expert_solves_a_libero_object_task(env):
    from peft_ckt.libero.perturbations import Perturbation
    from peft_ckt.libero.policies import ScriptedExpertPolicy

    env.perturbation = Perturbation("none")
    env.render_images = False  # the expert reads simulator state only
    policy = ScriptedExpertPolicy()
    policy.reset()
    obs = env.reset(0)
    try:
        for _ in range(env.max_steps):
            obs, _, terminated, truncated, info = env.step(policy.select_action(obs))
            if terminated or truncated:
                break
    finally:
        env.render_images = True
    assert info["is_success"], f"expert failed (phase {policy.phase}, {env.num_steps} steps)"
    assert env.num_steps < env.max_steps


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_sensor_noise_keeps_brightness(severity):
    from peft_ckt.libero.perturbations import apply_image_noise

    image = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
    noisy = apply_image_noise(image, severity, np.random.default_rng(0))
    assert noisy.shape == image.shape and noisy.dtype == np.uint8
    assert np.abs(noisy.astype(float) - image).mean() > severity  # visibly noisier with the level
    assert abs(float(noisy.mean()) - float(image.mean())) < 4  # noise, not a brightness change


def test_expert_follows_goal_predicates_in_order():
    from peft_ckt.libero.policies import ScriptedExpertPolicy

    goals = [["turnon", "flat_stove_1"], ["in", "alphabet_soup_1", "basket_1_contain_region"], ["In", "butter_1", "b"]]
    priv = {"goal": goals, "goal_satisfied": [False, False, False]}
    assert ScriptedExpertPolicy._goal(priv) == ("in", "alphabet_soup_1", "basket_1_contain_region")
    priv["goal_satisfied"] = [False, True, False]
    assert ScriptedExpertPolicy._goal(priv) == ("in", "butter_1", "b")
    with pytest.raises(ValueError, match="handles"):
        ScriptedExpertPolicy._goal({"goal": [["open", "drawer_1"]]})
