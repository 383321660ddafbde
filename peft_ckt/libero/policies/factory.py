"""Which policy a name or a folder means: the registry of policy types and `load_policy`.

Saved policies follow LeRobot's folder convention: `config.json` (with `policy_class`, the dotted path of the class,
or `type`, a name registered with `register_policy`) and `model.safetensors`. `load_policy(PATH)` imports the class
and calls its `from_pretrained(PATH)`; `load_policy("scripted")` gives the scripted expert. A folder is a file that
may come from anywhere: a `policy_class` outside diffusers, transformers, peft_ckt and lerobot (and not registered) is imported
only with `trust_remote_code=True`, and so is a diffusers/transformers class (e.g. `transformers.AutoModel`) whose
folder's config has an `auto_map` into the folder's own code. Every diffusers/transformers `from_pretrained` is told
`trust_remote_code` explicitly, so that transformers never asks on stdin whether to run such code.

The built-in policy modules register themselves here on import; this module finds them by module name
(`BUILTIN_POLICY_MODULES`, through importlib) so that it never imports them back.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from .base import LiberoPolicy

POLICY_REGISTRY: dict[str, type] = {}
# Policy types of this package, imported on first use: `"type"` in a policy folder's config.json -> module.
BUILTIN_POLICY_MODULES = {
    "wam": "peft_ckt.wam.policy",
    "state_mlp": "peft_ckt.libero.policies.mlp",
    "cnn": "peft_ckt.libero.policies.cnn",
}


def register_policy(name: str):
    """Class decorator: make a policy loadable from a folder whose config.json says `"type": name`."""

    def wrap(cls: type) -> type:
        POLICY_REGISTRY[name] = cls
        cls.name = name
        return cls

    return wrap


# Packages whose `from_pretrained` reads `auto_map` and takes `trust_remote_code`.
HF_PACKAGES = ("diffusers", "transformers")
# How a user allows a policy folder (or an adapter's teacher reference) to name code outside the trusted packages.
POLICY_OPT_IN = "`trust_remote_code=True` (`--trust-remote-code` on the command line)"


def _import_object(dotted: str):
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"policy_class must be a dotted path 'package.module.Class'; got {dotted!r}")
    return getattr(importlib.import_module(module_name), attr)


def _registered_class(dotted: str) -> type | None:
    # A class registered in this process (its module is imported already): loading it imports nothing new.
    for cls in POLICY_REGISTRY.values():
        if f"{cls.__module__}.{cls.__qualname__}" == dotted:
            return cls
    return None


def check_policy_spec(spec: str | os.PathLike, trust_remote_code: bool = False) -> None:
    """Refuses, without importing anything, a policy folder whose config.json names a `policy_class` outside the
    trusted packages (diffusers, transformers, peft_ckt, lerobot) and not registered, or a diffusers/transformers
    class with an `auto_map` into the folder's code, or an adapter folder whose teacher reference names such a class
    or has only pickle weights; allowed with `trust_remote_code=True`."""
    from ...teacher import check_trusted_class_path
    from ...teacher_ref import TeacherRef

    if trust_remote_code or str(spec) == "scripted":
        return
    path = Path(spec)
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        # The adapter's teacher is checked by the same rules as everywhere (TeacherRef), with the policy's opt-in.
        teacher = TeacherRef.from_adapter_folder(path)
        teacher.check(what=f"The teacher reference ({teacher.name!r}) of {adapter_config}", opt_in=POLICY_OPT_IN)
        return
    config_file = path / "config.json"
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text())
    dotted = config.get("policy_class")
    if dotted and _registered_class(str(dotted)) is None:
        check_trusted_class_path(str(dotted), f"{config_file} (`policy_class`)", POLICY_OPT_IN)
        auto_map = config.get("auto_map")
        if auto_map and str(dotted).split(".", 1)[0] in HF_PACKAGES:
            # A trusted Auto class would import and run the folder's own code named there.
            raise ValueError(
                f"{config_file} names the class {dotted!r} and has an `auto_map` into the folder's own code "
                f"({auto_map}), which loading it would import and run: it was not loaded. If you trust its source, "
                f"pass {POLICY_OPT_IN}."
            )


def saved_image_size(spec: str | os.PathLike) -> int | None:
    """The image size a policy folder was saved with (`image_size` in its config.json; for a peft adapter folder,
    in its local base model's), read without importing anything; None when it names none (or for `"scripted"`)."""
    if str(spec) == "scripted":
        return None
    path = Path(spec)
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base or not Path(base).is_dir():
            return None  # a Hub id: its config is not read here
        path = Path(base)
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    size = json.loads(config_file.read_text()).get("image_size")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    return None


def load_policy(spec: str | os.PathLike, trust_remote_code: bool = False) -> LiberoPolicy:
    """`"scripted"` -> `ScriptedExpertPolicy()`; a folder -> the class named by its config.json, `from_pretrained`.

    A `policy_class` is imported only from the trusted packages (diffusers, transformers, peft_ckt, lerobot), or when that
    class is registered already (`@register_policy`); any other dotted path, a diffusers/transformers class with an
    `auto_map` into the folder's code, or an adapter whose teacher reference names one or has only pickle weights,
    needs `trust_remote_code=True`, which a diffusers/transformers `from_pretrained` is always told explicitly.
    """
    if str(spec) == "scripted":
        from .expert import ScriptedExpertPolicy

        return ScriptedExpertPolicy()
    path = Path(spec)
    config_file = path / "config.json"
    check_policy_spec(path, trust_remote_code)
    if (path / "adapter_config.json").is_file():  # a peft adapter (CKT or LoRA) on a world action model
        importlib.import_module(BUILTIN_POLICY_MODULES["wam"])
        return POLICY_REGISTRY["wam"].from_pretrained(path, trust_remote_code=trust_remote_code)
    if not config_file.is_file():
        raise FileNotFoundError(
            f"policy must be 'scripted', a policy folder with a config.json or a peft adapter folder with an "
            f"adapter_config.json; {config_file} does not exist"
        )
    config = json.loads(config_file.read_text())
    if config.get("type") in BUILTIN_POLICY_MODULES and config["type"] not in POLICY_REGISTRY:
        importlib.import_module(BUILTIN_POLICY_MODULES[config["type"]])
    if "policy_class" in config:
        cls = _registered_class(str(config["policy_class"])) or _import_object(config["policy_class"])
    elif config.get("type") in POLICY_REGISTRY:
        cls = POLICY_REGISTRY[config["type"]]
    else:
        raise ValueError(
            f"{config_file} names no loadable policy: give 'policy_class' (dotted path) or a registered 'type' "
            f"(registered: {sorted(POLICY_REGISTRY)})"
        )
    if not hasattr(cls, "from_pretrained"):
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no from_pretrained(path)")
    # Said explicitly to diffusers/transformers: left unset, transformers asks on stdin whether to run the folder's
    # `auto_map` code, and a "y" (or a piped stdin) would run it without the user's opt-in.
    from ...teacher import is_hf_class

    kwargs = {"trust_remote_code": trust_remote_code} if isinstance(cls, type) and is_hf_class(cls) else {}
    policy = cls.from_pretrained(path, **kwargs)
    for attr in ("reset", "select_action"):
        if not callable(getattr(policy, attr, None)):
            raise TypeError(f"{type(policy).__name__} lacks {attr}(); see peft_ckt.libero.policies.LiberoPolicy")
    return policy
