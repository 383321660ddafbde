"""The environment factory: registered configs build real LIBERO / official LIBERO-Plus environments."""

from __future__ import annotations

import pytest

from peft_ckt.libero.envs import ENV_CONFIGS, LiberoEnvConfig, LiberoPlusEnvConfig, make_env
from peft_ckt.libero.runtime import libero_import_error


def test_configs_are_registered_hashable_and_checked():
    assert {"libero", "libero_plus"} <= set(ENV_CONFIGS)
    a, b = LiberoEnvConfig(task_id=0), LiberoEnvConfig(task_id=1)
    assert a.cache_key() != b.cache_key() and a.cache_key() == LiberoEnvConfig(task_id=0).cache_key()
    assert LiberoPlusEnvConfig(task="x").cache_key()[0] == "libero_plus"
    with pytest.raises(ValueError, match="unknown environment type 'mujoco'"):
        make_env("mujoco")
    with pytest.raises(TypeError, match="only with a registered type name"):
        make_env(a, task_id=3)
    with pytest.raises(ValueError, match="must name an official task"):
        make_env(LiberoPlusEnvConfig())


@pytest.mark.libero
@pytest.mark.skipif(libero_import_error() is not None, reason=f"libero extra not importable: {libero_import_error()}")
def test_make_env_builds_the_libero_task_by_name():
    env = make_env("libero", suite="libero_object", task_id=2, image_size=32, render_images=False, max_steps=5)
    try:
        observation = env.reset(0)
        assert env.task.task_id == 2
        assert observation["observation.state"].shape == (8,)
        assert env.max_steps == 5
    finally:
        env.close()
