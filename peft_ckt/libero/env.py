"""A LIBERO task as an environment with LeRobot-style observations, rendering on demand and LIBERO-Plus perturbations.

Rendering dominates the cost of a LIBERO step on CPU (physics alone runs at ~60 steps/s on one core, two 128x128
cameras cost ~0.1 s per step through Mesa), so images are rendered only when asked for: `render_images=True` renders
the policy's cameras at every step, `render_images=False` runs physics only and `render_observation()` renders the
frames a caller decides to keep (demonstration collection, videos).
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from .perturbations import Perturbation, ScenePerturber, apply_image_noise, rewrite_instruction
from .runtime import configure_libero
from .suites import NUM_SETTLE_STEPS, LiberoTask, get_task, load_init_states

# LeRobot / Hub LIBERO naming: agent-view camera and wrist camera.
CAMERAS: dict[str, str] = {"image": "agentview", "wrist_image": "robot0_eye_in_hand"}
STATE_DIM = 8  # eef position (3) + eef axis-angle (3) + gripper finger positions (2), as in the Hub LIBERO datasets
ACTION_DIM = 7  # OSC delta pose (6, scaled to [-1, 1]) + gripper (-1 open, +1 close)
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)


def _as_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def episode_seed(seed: int, *parts: Any) -> int:
    """A stable 32-bit seed from a base seed and identifying parts (task, init index, perturbation...)."""
    text = "|".join(str(p) for p in (seed, *parts))
    return zlib.crc32(text.encode())


def check_cameras(cameras: tuple[str, ...]) -> None:
    """A clear error for a camera key the environments do not render."""
    unknown = [c for c in cameras if c not in CAMERAS]
    if unknown:
        raise ValueError(f"Unknown camera key(s) {unknown}; expected among {list(CAMERAS)}")


class LiberoEnv:
    """One LIBERO task with the standard evaluation protocol.

    Args:
        suite: `libero_spatial`, `libero_object`, `libero_goal`, `libero_10` or `libero_90`.
        task_id: task index inside the suite.
        image_size: rendered image size, an int or `(height, width)`.
        cameras: observation keys to render, among `CAMERAS` (`image`: agent view, `wrist_image`: wrist).
        render_images: render the cameras into every observation; False runs physics only.
        privileged: add `observation["privileged"]` (object poses and sizes, goal) for scripted experts.
        perturbation: a LIBERO-Plus perturbation applied at every reset (None or kind "none": the original task).
        seed: base seed; the perturbation of an episode depends on (seed, task, init index) only.
        max_steps: episode horizon; defaults to the suite's standard limit.
        num_settle_steps: no-op steps after placing the init state (not counted in the horizon).
        fast_render: switch off shadows, reflections and multisampling (the images stay faithful; ~1.2x faster).

    Observations (numpy): `observation.state [8]` float32, `observation.images.<key> [H, W, 3]` uint8 upright (when
    rendered), `task` (instruction, rewritten under the language perturbation), and `privileged` when requested.
    Actions: `[7]` in [-1, 1].
    """

    def __init__(
        self,
        suite: str,
        task_id: int,
        image_size: int | tuple[int, int] = 128,
        cameras: tuple[str, ...] = ("image", "wrist_image"),
        render_images: bool = True,
        privileged: bool = False,
        perturbation: Perturbation | None = None,
        seed: int = 0,
        max_steps: int | None = None,
        num_settle_steps: int = NUM_SETTLE_STEPS,
        fast_render: bool = True,
    ) -> None:
        check_cameras(cameras)
        configure_libero()
        from libero.libero.envs import OffScreenRenderEnv

        self.task: LiberoTask = get_task(suite, task_id)
        self.image_size = _as_hw(image_size)
        self.cameras = tuple(cameras)
        self.render_images = render_images
        self.privileged = privileged
        self.perturbation = perturbation if perturbation is not None else Perturbation("none")
        self.seed = seed
        self.max_steps = max_steps if max_steps is not None else self.task.max_steps
        self.num_settle_steps = num_settle_steps
        self.init_states = load_init_states(suite, task_id)

        height, width = self.image_size
        # Soft resets keep the compiled model (0.03 s instead of 2-5 s); perturbed model fields are restored by the
        # perturber at each reset instead.
        self._env = OffScreenRenderEnv(
            bddl_file_name=str(self.task.bddl_file),
            camera_heights=height,
            camera_widths=width,
            use_camera_obs=False,
            hard_reset=False,
            horizon=self.max_steps + num_settle_steps + 10,  # robosuite refuses steps past its own horizon
        )
        self._start(seed, fast_render)
        self.instruction = self.task.language
        self.init_index: int | None = None
        self.num_steps = 0
        self._success = False

    # ------------------------------------------------------------------ set-up
    @property
    def sim(self):
        return self._env.sim

    @property
    def inner_env(self):
        """The underlying LIBERO / robosuite environment."""
        return self._env.env

    def _start(self, seed: int, fast_render: bool) -> None:
        """Seeds and resets the wrapped simulator, sets up rendering, the scene perturber and the noise streams
        (the policy's and the recording's, kept apart so that a video never changes what the policy sees)."""
        self._env.seed(seed)
        self._env.reset()
        self._fast_render = fast_render
        if fast_render:
            self._apply_fast_render()
        self._perturber = ScenePerturber(self._env.env)
        self._rng = np.random.default_rng(seed)
        self._record_rng = np.random.default_rng([seed, 1])

    def _apply_fast_render(self) -> None:
        import mujoco

        context = self.sim._render_context_offscreen
        if context is None:
            return
        model = self.sim.model._model
        if model.vis.quality.offsamples != 0:
            model.vis.quality.offsamples = 0
            context.gl_ctx.make_current()
            context.con.free()
            context._set_mujoco_context_and_buffers()
        context.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        context.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    # ------------------------------------------------------------------ episode
    def reset(self, init_index: int = 0, init_state: np.ndarray | None = None) -> dict[str, Any]:
        """Start an episode from a shipped init state (or an explicit flattened MuJoCo state) and settle."""
        if init_state is None:
            if not 0 <= init_index < len(self.init_states):
                raise ValueError(f"init_index must be in [0, {len(self.init_states)}); got {init_index}")
            init_state = self.init_states[init_index]
        self.init_index = init_index
        self._env.reset()
        self._reset_gripper_commands()
        self._perturber.restore()
        self._env.set_init_state(init_state)
        kind, severity = self.perturbation.kind, self.perturbation.severity
        seed = episode_seed(self.seed, self.task.suite, self.task.task_id, init_index, kind, severity)
        self._rng = np.random.default_rng(seed)
        # Frames rendered only to be kept (videos) draw their sensor noise from their own stream: recording an
        # episode must not change what the policy sees.
        self._record_rng = np.random.default_rng([seed, 1])
        self.instruction = self.task.language
        if kind == "language":
            self.instruction = rewrite_instruction(self.task.language, severity, self._rng)
        elif kind != "none" and kind != "noise":
            self._perturber.apply(kind, severity, self._rng)
        if self._fast_render:
            self._apply_fast_render()
        for _ in range(self.num_settle_steps):
            self._env.step(NOOP_ACTION)
        self.num_steps = 0
        self._success = bool(self._env.check_success())
        return self._observation(self.render_images)

    def _reset_gripper_commands(self) -> None:
        """Start every episode from a fresh environment's gripper command.

        robosuite's grippers integrate their command (`current_action` moves by a fixed speed each step) and a soft
        reset keeps it, so an episode would begin from where the previous one left the gripper: results would
        depend on which episodes a worker ran before (and a resumed run would differ from a straight one).
        """
        for robot in self._env.env.robots:
            grippers = robot.gripper.values() if isinstance(robot.gripper, dict) else [robot.gripper]
            for gripper in grippers:
                if getattr(gripper, "current_action", None) is not None:
                    gripper.current_action = np.zeros(gripper.dof)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Apply one 7-D action. Returns `(observation, reward, terminated, truncated, info)` (gymnasium order)."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"Expected a {ACTION_DIM}-D action, got shape {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"Action has NaN/inf values: {action}")
        _, reward, _, _ = self._env.step(np.clip(action, -1.0, 1.0))
        self.num_steps += 1
        self._success = bool(self._env.check_success())
        terminated = self._success
        truncated = not terminated and self.num_steps >= self.max_steps
        info = {"is_success": self._success, "steps": self.num_steps}
        return self._observation(self.render_images), float(reward), terminated, truncated, info

    def check_success(self) -> bool:
        return self._success

    # ------------------------------------------------------------------ observations
    def render(self, camera: str = "image", for_record: bool = False) -> np.ndarray:
        """Render one camera upright, `[H, W, 3]` uint8, with the active sensor-noise perturbation.

        `for_record=True` for a frame that is only kept (a video): its noise comes from a separate random stream,
        so the observations the policy gets are the same whether the episode is recorded or not.
        """
        height, width = self.image_size
        frame = self.sim.render(width=width, height=height, camera_name=CAMERAS[camera])
        frame = np.ascontiguousarray(frame[::-1])  # OpenGL rows run bottom-up
        if self.perturbation.kind == "noise":
            rng = self._record_rng if for_record else self._rng
            frame = apply_image_noise(frame, self.perturbation.severity, rng)
        return frame

    def render_observation(self) -> dict[str, Any]:
        """The current observation with images, whatever `render_images` says (for frames one keeps)."""
        return self._observation(True)

    def state(self) -> np.ndarray:
        """`[8]` float32: eef position, eef orientation as axis-angle, gripper finger positions."""
        from robosuite.utils.transform_utils import quat2axisangle

        robot = self.inner_env.robots[0]
        data = self.sim.data
        eef_site = robot.eef_site_id
        eef_pos = np.array(data.site_xpos[eef_site])
        eef_quat = self._eef_quat_xyzw()
        gripper = np.array([data.qpos[i] for i in robot._ref_gripper_joint_pos_indexes])
        return np.concatenate([eef_pos, quat2axisangle(eef_quat), gripper]).astype(np.float32)

    def _eef_quat_xyzw(self) -> np.ndarray:
        from robosuite.utils.transform_utils import convert_quat

        robot = self.inner_env.robots[0]
        body = self.sim.model.body_name2id(robot.robot_model.eef_name)
        return convert_quat(np.array(self.sim.data.body_xquat[body]), to="xyzw")

    def _observation(self, with_images: bool) -> dict[str, Any]:
        obs: dict[str, Any] = {"observation.state": self.state(), "task": self.instruction}
        if with_images:
            for key in self.cameras:
                obs[f"observation.images.{key}"] = self.render(key)
        if self.privileged:
            obs["privileged"] = self.privileged_state()
        return obs

    def privileged_state(self) -> dict[str, Any]:
        """Simulator truth for experts: eef pose, gripper, objects (pose and world AABB), goal predicates."""
        env = self.inner_env
        data, model = self.sim.data, self.sim.model
        robot = env.robots[0]
        objects = {}
        for name, body_id in env.obj_body_id.items():
            lo, hi = self._body_aabb(body_id)
            center_local, half_local = self._body_local_box(body_id)
            objects[name] = {
                "fixture": name in env.fixtures_dict,
                "pos": np.array(data.body_xpos[body_id]),
                "quat_wxyz": np.array(data.body_xquat[body_id]),
                "xmat": np.array(data.body_xmat[body_id]).reshape(3, 3),
                "aabb_min": lo,
                "aabb_max": hi,
                "box_center_local": center_local,
                "box_half_local": half_local,
            }
        regions = {}
        for name in env.object_sites_dict:
            try:
                site_id = model.site_name2id(name)
            except ValueError:
                continue
            regions[name] = {"pos": np.array(data.site_xpos[site_id]), "size": np.array(model.site_size[site_id])}
        return {
            "eef_pos": np.array(data.site_xpos[robot.eef_site_id]),
            "eef_quat_xyzw": self._eef_quat_xyzw(),
            "gripper_qpos": np.array([data.qpos[i] for i in robot._ref_gripper_joint_pos_indexes]),
            "objects": objects,
            "regions": regions,
            "goal": [list(p) for p in env.parsed_problem["goal_state"]],
            "goal_satisfied": [self._predicate_holds(p) for p in env.parsed_problem["goal_state"]],
            "obj_of_interest": list(env.obj_of_interest),
        }

    def _predicate_holds(self, predicate: list[str]) -> bool | None:
        """Truth of one BDDL goal predicate now (None when the task class cannot evaluate it alone)."""
        evaluate = getattr(self.inner_env, "_eval_predicate", None)
        if evaluate is None:
            return None
        try:
            return bool(evaluate(predicate))
        except Exception:  # noqa: BLE001 - unknown predicate kinds are reported as unknown, not fatal
            return None

    def _body_geoms(self, body_id: int) -> np.ndarray:
        """Geom ids of a body and its descendants (cached: the model does not change between episodes)."""
        cache = self.__dict__.setdefault("_geom_cache", {})
        if body_id not in cache:
            model = self.sim.model._model
            bodies = {body_id}
            for b in range(body_id + 1, model.nbody):
                if model.body_parentid[b] in bodies:
                    bodies.add(b)
            cache[body_id] = np.flatnonzero(np.isin(model.geom_bodyid, list(bodies)))
        return cache[body_id]

    def _body_local_box(self, body_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Box `(center [3], half extents [3])` in the body's own frame (rigid: cached per body)."""
        cache = self.__dict__.setdefault("_local_box_cache", {})
        if body_id not in cache:
            model, data = self.sim.model._model, self.sim.data._data
            geoms = self._body_geoms(body_id)
            body_rot = data.xmat[body_id].reshape(3, 3)
            if len(geoms) == 0:
                cache[body_id] = (np.zeros(3), np.zeros(3))
            else:
                rot = body_rot.T @ data.geom_xmat[geoms].reshape(-1, 3, 3)  # [G, 3, 3] geom -> body frame
                pos = (data.geom_xpos[geoms] - data.xpos[body_id]) @ body_rot
                center = pos + np.einsum("gij,gj->gi", rot, model.geom_aabb[geoms, :3])
                extent = np.einsum("gij,gj->gi", np.abs(rot), model.geom_aabb[geoms, 3:])
                lo, hi = (center - extent).min(0), (center + extent).max(0)
                cache[body_id] = ((lo + hi) / 2, (hi - lo) / 2)
        return cache[body_id]

    def _body_aabb(self, body_id: int) -> tuple[np.ndarray, np.ndarray]:
        """World-frame axis-aligned box `(min [3], max [3])` over the geoms of a body and its descendants."""
        model, data = self.sim.model._model, self.sim.data._data
        geoms = self._body_geoms(body_id)
        if len(geoms) == 0:
            pos = np.array(data.xpos[body_id])
            return pos, pos
        rot = data.geom_xmat[geoms].reshape(-1, 3, 3)  # [G, 3, 3]
        center = data.geom_xpos[geoms] + np.einsum("gij,gj->gi", rot, model.geom_aabb[geoms, :3])
        extent = np.einsum("gij,gj->gi", np.abs(rot), model.geom_aabb[geoms, 3:])
        return (center - extent).min(0), (center + extent).max(0)

    def close(self) -> None:
        env = getattr(self, "_env", None)
        if env is not None:
            self._env = None
            try:
                env.close()
            except Exception:  # noqa: BLE001 - closing a half-initialised GL context must not mask the real error
                pass

    def __enter__(self) -> LiberoEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
