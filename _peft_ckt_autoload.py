"""Start-up hook of peft-ckt, run by `peft_ckt_autoload.pth`, which the package installs into site-packages.

It registers peft-ckt with the libraries that look methods and policies up by name, as soon as they are imported:

- `peft`: the "ckt" peft method, so that a plain `PeftModel.from_pretrained(student, "user/ckt-adapter",
  teacher=teacher)` works without `import peft_ckt`;
- `lerobot.configs.policies` (LeRobot's policy config registry, imported by `lerobot-train`, `lerobot-eval` and the
  other LeRobot commands before they parse `--policy.type` or read a saved policy's `config.json`): the `ckt` and
  `ckt_wam` policy types (`peft_ckt.integrations.lerobot`), so that `pip install "peft-ckt[lerobot]"` alone gives
  `--policy.type=ckt`, without a `lerobot_policy_*` distribution or `--policy.discover_packages_path`.

At interpreter start-up it only puts a finder on `sys.meta_path` that waits for those imports: a program that imports
neither pays for this file alone. When one is imported, peft-ckt's part is imported right after it (the library has
already loaded torch, which is most of the cost). Set `PEFT_CKT_NO_AUTOLOAD=1` to turn it off.
"""

import os
import sys
import warnings

DISABLE_ENV = "PEFT_CKT_NO_AUTOLOAD"
_MARKER = "_peft_ckt_autoload"
LEROBOT_REGISTRY = "lerobot.configs.policies"
LEROBOT_POLICIES = "peft_ckt.integrations.lerobot"


def _warn(what: str, module: str, err: Exception) -> None:
    # Never break the user's import for a start-up convenience; say what is missing and how to see why.
    warnings.warn(
        f"peft-ckt could not register {what} ({type(err).__name__}: {err}); run `import {module}` to see the full "
        "error.",
        stacklevel=3,
    )


def _register_peft() -> None:
    if "peft_ckt" in sys.modules:  # peft_ckt itself is importing peft; it registers when it finishes
        return
    try:
        import peft_ckt  # noqa: F401  (registers "ckt" with peft)
    except Exception as err:
        _warn("its 'ckt' peft method when peft was imported", "peft_ckt", err)


def _register_lerobot() -> None:
    if LEROBOT_POLICIES in sys.modules:  # being imported (it imports the registry itself): it registers on its own
        return
    try:
        import peft_ckt.integrations.lerobot  # noqa: F401  (registers the `ckt` and `ckt_wam` policy types)
    except Exception as err:
        _warn("its LeRobot policy types `ckt` and `ckt_wam`", LEROBOT_POLICIES, err)


# Module -> what to register once it is imported.
HOOKS = {"peft": _register_peft, LEROBOT_REGISTRY: _register_lerobot}


class _RegisteringLoader:
    """Runs the module's own loader, then registers; afterwards the module keeps its real loader."""

    def __init__(self, loader, register) -> None:
        self._loader = loader
        self._register = register

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._register()


class _ImportWatcher:
    """Meta-path finder that only answers for the modules in `HOOKS`: it finds them with the other finders and
    wraps their loader. A mere lookup (`importlib.util.find_spec("peft")`, as transformers does) imports nothing."""

    def find_spec(self, name, path=None, target=None):
        register = HOOKS.get(name)
        if register is None:
            return None
        for finder in sys.meta_path:
            if finder is self or getattr(finder, _MARKER, False) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader, register)
        return spec


setattr(_ImportWatcher, _MARKER, True)


def install() -> None:
    """Puts the watcher on `sys.meta_path` (once); registers right away for modules already imported."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return
    for name, register in HOOKS.items():
        if name in sys.modules:
            register()
    if not any(getattr(finder, _MARKER, False) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ImportWatcher())


install()
