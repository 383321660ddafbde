"""The pre-`policies/` / `workers/` module paths still work for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys

import pytest

# Old module -> (the new module its warning names, the names other code imported from it).
OLD_PATHS = {
    "peft_ckt.libero.policy": (
        "peft_ckt.libero.policies",
        [
            "BUILTIN_POLICY_MODULES",
            "POLICY_OPT_IN",
            "POLICY_REGISTRY",
            "LiberoPolicy",
            "TorchLiberoPolicy",
            "StateMLPPolicy",
            "_torch_policy_base",
            "check_policy_spec",
            "load_policy",
            "observation_to_batch",
            "register_policy",
        ],
    ),
    "peft_ckt.libero.expert": ("peft_ckt.libero.policies.expert", ["ScriptedExpertPolicy"]),
    "peft_ckt.libero.mlp_policy": ("peft_ckt.libero.policies.mlp", ["StateMLPPolicy"]),
    "peft_ckt.libero.parallel": (
        "peft_ckt.libero.workers",
        [
            "BACKENDS",
            "_ENV_CACHE",
            "_POLICY_CACHE",
            "_init_worker",
            "cached_env",
            "cached_policy",
            "check_backend",
            "close_cached",
            "default_num_workers",
            "episode_env",
            "run_jobs",
        ],
    ),
    "peft_ckt.libero.ray_backend": (
        "peft_ckt.libero.workers.ray",
        ["RAY_INSTALL_HINT", "_EpisodeWorker", "cluster_workers", "ray_import_error", "run_jobs_ray"],
    ),
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_path_warns_and_provides_its_names(old, monkeypatch):
    new, names = OLD_PATHS[old]
    monkeypatch.delitem(sys.modules, old, raising=False)  # the warning is given at import
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated; import from {new} "):
        module = importlib.import_module(old)
    new_module = importlib.import_module(new)
    for name in names:
        value = getattr(module, name)
        # The same object as at the new path (where the new path exports it).
        if hasattr(new_module, name):
            assert value is getattr(new_module, name), name


def test_old_and_new_paths_share_the_worker_caches(monkeypatch):
    monkeypatch.delitem(sys.modules, "peft_ckt.libero.parallel", raising=False)
    with pytest.warns(DeprecationWarning):
        parallel = importlib.import_module("peft_ckt.libero.parallel")
    from peft_ckt.libero.workers import state

    assert parallel._POLICY_CACHE is state._POLICY_CACHE and parallel._ENV_CACHE is state._ENV_CACHE
    assert parallel._init_worker is state.init_worker
