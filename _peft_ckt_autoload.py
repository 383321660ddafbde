"""Start-up hook of peft-ckt, run by `peft_ckt_autoload.pth`, which the package installs into site-packages.

It registers the "ckt" peft method as soon as something imports peft, so that a plain
`PeftModel.from_pretrained(student, "user/ckt-adapter", teacher=teacher)` works without `import peft_ckt`. At
interpreter start-up it only puts a finder on `sys.meta_path` that waits for `peft` to be imported: a program that
never imports peft pays for this file alone. When peft is imported, `peft_ckt` is imported right after it (peft has
already loaded torch and transformers, which is most of the cost). Set `PEFT_CKT_NO_AUTOLOAD=1` to turn it off.
"""

import os
import sys

DISABLE_ENV = "PEFT_CKT_NO_AUTOLOAD"
_MARKER = "_peft_ckt_autoload"


def _register() -> None:
    if "peft_ckt" in sys.modules:  # peft_ckt itself is importing peft; it registers when it finishes
        return
    try:
        import peft_ckt  # noqa: F401  (registers "ckt" with peft)
    except Exception as err:  # never break `import peft` for a start-up convenience
        import warnings

        warnings.warn(
            f"peft-ckt could not register its 'ckt' peft method when peft was imported ({type(err).__name__}: "
            f"{err}); run `import peft_ckt` to see the full error.",
            stacklevel=2,
        )


class _RegisteringLoader:
    """Runs peft's own loader, then registers CKT; afterwards the module keeps its real loader."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        _register()


class _PeftImportWatcher:
    """Meta-path finder that only answers for `peft`: it finds peft with the other finders and wraps its loader.
    A mere lookup (`importlib.util.find_spec("peft")`, as transformers does) imports nothing."""

    def find_spec(self, name, path=None, target=None):
        if name != "peft":
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
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


setattr(_PeftImportWatcher, _MARKER, True)


def install() -> None:
    """Puts the watcher on `sys.meta_path` (once); registers right away when peft is already imported."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return
    if "peft" in sys.modules:
        _register()
        return
    if not any(getattr(finder, _MARKER, False) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PeftImportWatcher())


install()
