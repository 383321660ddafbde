"""LIBERO-Plus robustness perturbations, seeded and deterministic, with severity levels 1 (mild) to 5 (strong).

The seven dimensions of LIBERO-Plus are applied to a plain LIBERO scene after its init state is placed:

| kind         | what changes                                                                     |
|--------------|----------------------------------------------------------------------------------|
| `camera`     | agent-view camera orbits the scene (azimuth, elevation), moves in/out, new FOV |
| `robot`      | arm joint angles of the initial robot configuration                             |
| `language`   | the instruction is rewritten (synonyms, paraphrase, distracting context)        |
| `light`      | light intensity, colour, direction, position, ambient level                     |
| `background` | colour of floor, walls and table; textures replaced by plain colours from 3     |
| `noise`      | camera sensor noise on every rendered frame (Gaussian, salt-and-pepper, blur)   |
| `layout`     | objects move on the table (position and yaw), without interpenetration          |

Every model field touched is snapshotted once and restored at the next reset, so episodes are independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERTURBATIONS: tuple[str, ...] = ("camera", "robot", "language", "light", "background", "noise", "layout")
# Column names of the LIBERO-Plus result tables.
LIBERO_PLUS_COLUMNS: dict[str, str] = {
    "camera": "Camera",
    "robot": "Robot",
    "language": "Language",
    "light": "Light",
    "background": "Background",
    "noise": "Noise",
    "layout": "Layout",
}
SEVERITY_LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Perturbation:
    """A perturbation kind (`none` or one of `PERTURBATIONS`) and its severity (1..5)."""

    kind: str = "none"
    severity: int = 3

    def __post_init__(self) -> None:
        if self.kind != "none" and self.kind not in PERTURBATIONS:
            raise ValueError(f"Unknown perturbation {self.kind!r}; expected 'none' or one of {PERTURBATIONS}")
        if self.severity not in SEVERITY_LEVELS:
            raise ValueError(f"Perturbation severity must be one of {SEVERITY_LEVELS}; got {self.severity}")


def expand_perturbations(spec: str) -> list[str]:
    """`"all"` -> the seven kinds; `"camera,light"` -> both; `"none"` -> `["none"]`."""
    kinds = []
    for part in spec.split(","):
        part = part.strip()
        if part == "all":
            kinds.extend(PERTURBATIONS)
        elif part:
            Perturbation(part)  # validates
            kinds.append(part)
    if not kinds:
        raise ValueError("No perturbation given")
    return list(dict.fromkeys(kinds))


# ----------------------------------------------------------------------------- rotations (no scipy needed)
def _quat_wxyz_to_mat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _mat_to_quat_wxyz(m: np.ndarray) -> np.ndarray:
    import mujoco

    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(m, dtype=np.float64).reshape(-1))
    return q


def _axis_angle_mat(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _signed(rng: np.random.Generator, low: float, high: float) -> float:
    """A magnitude in [low, high] with a random sign."""
    return float(rng.uniform(low, high) * rng.choice([-1.0, 1.0]))


# ----------------------------------------------------------------------------- scene perturbations
class ScenePerturber:
    """Applies camera / robot / light / background / layout perturbations to a LIBERO env and undoes them."""

    _MODEL_FIELDS = (
        "cam_pos",
        "cam_quat",
        "cam_fovy",
        "light_pos",
        "light_dir",
        "light_diffuse",
        "light_ambient",
        "light_specular",
        "mat_rgba",
        "mat_texid",
        "mat_specular",
        "mat_reflectance",
    )

    def __init__(self, env, camera: str = "agentview") -> None:
        self.env = env
        self.camera = camera
        self._snapshot = {name: np.array(getattr(self._model, name)).copy() for name in self._MODEL_FIELDS}
        headlight = self._model.vis.headlight
        self._headlight = (headlight.ambient.copy(), headlight.diffuse.copy())

    @property
    def _model(self):
        return self.env.sim.model._model

    @property
    def _data(self):
        return self.env.sim.data._data

    def restore(self) -> None:
        for name, value in self._snapshot.items():
            getattr(self._model, name)[...] = value
        self._model.vis.headlight.ambient[:] = self._headlight[0]
        self._model.vis.headlight.diffuse[:] = self._headlight[1]

    def apply(self, kind: str, severity: int, rng: np.random.Generator) -> None:
        getattr(self, f"_apply_{kind}")(severity, rng)
        import mujoco

        mujoco.mj_forward(self._model, self._data)

    # camera: orbit around the point the camera looks at on the table
    def _apply_camera(self, severity: int, rng: np.random.Generator) -> None:
        import mujoco

        model = self._model
        cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, self.camera)
        if cam < 0:
            raise ValueError(f"Camera {self.camera!r} not found in the scene")
        pos = model.cam_pos[cam].copy()
        rot = _quat_wxyz_to_mat(model.cam_quat[cam])
        forward = -rot[:, 2]  # MuJoCo cameras look along -z
        table_z = self._table_height()
        distance = (table_z - pos[2]) / forward[2] if forward[2] < -1e-3 else 1.0
        target = pos + forward * distance
        azimuth = np.deg2rad(_signed(rng, 3.0 * severity, 6.0 * severity))
        elevation = np.deg2rad(_signed(rng, 1.5 * severity, 3.0 * severity))
        rot_az = _axis_angle_mat(np.array([0.0, 0.0, 1.0]), azimuth)
        side = np.cross(forward, [0.0, 0.0, 1.0])
        rot_el = _axis_angle_mat(side if np.linalg.norm(side) > 1e-6 else np.array([1.0, 0, 0]), elevation)
        total = rot_el @ rot_az
        scale = 1.0 + _signed(rng, 0.03 * severity, 0.06 * severity)
        model.cam_pos[cam] = target + total @ (pos - target) * scale
        model.cam_quat[cam] = _mat_to_quat_wxyz(total @ rot)
        model.cam_fovy[cam] = float(
            np.clip(model.cam_fovy[cam] + _signed(rng, 1.0 * severity, 2.0 * severity), 20, 90)
        )

    def _table_height(self) -> float:
        """Height of the support surface: the lowest object's bottom (objects rest on it)."""
        data = self._data
        heights = [data.xpos[b][2] for b in self.env.obj_body_id.values()]
        return float(min(heights)) if heights else 0.0

    # robot: joint-space offset of the arm's initial configuration
    def _apply_robot(self, severity: int, rng: np.random.Generator) -> None:
        robot = self.env.robots[0]
        idx = list(robot._ref_joint_pos_indexes)
        vel_idx = list(robot._ref_joint_vel_indexes)
        magnitude = 0.04 * severity  # radians; severity 5 -> up to ~0.2 rad (11 degrees) per joint
        offsets = rng.uniform(0.5, 1.0, size=len(idx)) * magnitude * rng.choice([-1.0, 1.0], size=len(idx))
        joint_ids = [self.env.sim.model.joint_name2id(j) for j in robot.robot_model.joints]
        low, high = self._model.jnt_range[joint_ids].T
        qpos = self._data.qpos
        qpos[idx] = np.clip(qpos[idx] + offsets, low + 1e-3, high - 1e-3)
        self._data.qvel[vel_idx] = 0.0
        import mujoco

        mujoco.mj_forward(self._model, self._data)
        robot.controller.update(force=True)
        robot.controller.reset_goal()

    # light: intensity, tint, direction, position, ambient
    def _apply_light(self, severity: int, rng: np.random.Generator) -> None:
        model = self._model
        s = severity / 5.0
        brightness = float(np.exp(_signed(rng, 0.25 * s, 0.9 * s)))
        for i in range(model.nlight):
            tint = 1.0 + rng.uniform(-0.35, 0.35, size=3) * s
            model.light_diffuse[i] = np.clip(model.light_diffuse[i] * brightness * tint, 0.0, 1.5)
            model.light_specular[i] = np.clip(model.light_specular[i] * brightness, 0.0, 1.0)
            model.light_ambient[i] = np.clip(model.light_ambient[i] + rng.uniform(0.0, 0.2 * s, size=3), 0.0, 1.0)
            direction = model.light_dir[i] + rng.normal(0.0, 0.5 * s, size=3)
            direction[2] = -abs(direction[2]) - 0.2  # keep it shining downwards
            model.light_dir[i] = direction / np.linalg.norm(direction)
            model.light_pos[i] = model.light_pos[i] + rng.uniform(-1.0, 1.0, size=3) * s
        headlight = model.vis.headlight
        headlight.ambient[:] = np.clip(headlight.ambient * brightness + rng.uniform(0, 0.1 * s), 0.0, 1.0)
        headlight.diffuse[:] = np.clip(headlight.diffuse * brightness, 0.0, 1.0)

    # background: scene materials (not the robot, not the task objects)
    def _scene_materials(self) -> list[int]:
        import mujoco

        model = self._model
        object_prefixes = tuple(self.env.obj_body_id)
        ids = []
        for m in range(model.nmat):
            name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_MATERIAL, m) or ""
            if name.startswith(("robot0_", "gripper0_", "mount0_")) or name.startswith(object_prefixes):
                continue
            ids.append(m)
        return ids

    def _apply_background(self, severity: int, rng: np.random.Generator) -> None:
        model = self._model
        s = severity / 5.0
        for m in self._scene_materials():
            color = rng.uniform(0.1, 1.0, size=3)
            model.mat_rgba[m, :3] = (1 - s) * model.mat_rgba[m, :3] + s * color
            if severity >= 3 and rng.random() < 0.3 + 0.15 * severity:
                model.mat_texid[m] = -1  # plain colour instead of the wood / wall texture
            model.mat_specular[m] = rng.uniform(0.0, 0.5 * s)

    # layout: move objects on the table, keeping them apart
    def _apply_layout(self, severity: int, rng: np.random.Generator, attempts: int = 20) -> None:
        import mujoco

        model, data = self._model, self._data
        env = self.env
        free_joints = []
        for name in env.objects_dict:
            for joint in env.objects_dict[name].joints:
                j = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, joint)
                if j >= 0 and model.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE:
                    free_joints.append(model.jnt_qposadr[j])
        if not free_joints:
            return
        original = data.qpos.copy()
        for attempt in range(attempts):
            scale = 1.0 if attempt < attempts // 2 else 0.5
            data.qpos[:] = original
            for adr in free_joints:
                shift = rng.uniform(0.5, 1.0, size=2) * 0.012 * severity * scale * rng.choice([-1.0, 1.0], size=2)
                data.qpos[adr : adr + 2] += shift
                yaw = _signed(rng, 4.0 * severity, 9.0 * severity) * scale
                rot = _axis_angle_mat(np.array([0.0, 0.0, 1.0]), np.deg2rad(yaw))
                quat = data.qpos[adr + 3 : adr + 7].copy()
                data.qpos[adr + 3 : adr + 7] = _mat_to_quat_wxyz(rot @ _quat_wxyz_to_mat(quat))
            data.qvel[:] = 0.0
            mujoco.mj_forward(model, data)
            if not self._objects_interpenetrate():
                return
        data.qpos[:] = original  # no valid layout found at this severity: keep the original one
        mujoco.mj_forward(model, data)

    def _objects_interpenetrate(self, tolerance: float = 2e-3) -> bool:
        model, data = self._model, self._data
        object_bodies = set(self.env.obj_body_id.values())

        def root(b: int) -> int:
            while model.body_parentid[b] != 0:
                b = model.body_parentid[b]
            return b

        roots = {root(b) for b in object_bodies}
        for i in range(data.ncon):
            con = data.contact[i]
            r1, r2 = root(model.geom_bodyid[con.geom1]), root(model.geom_bodyid[con.geom2])
            # Object against object only: objects resting on the floor or table touch it by design.
            if r1 != r2 and r1 in roots and r2 in roots and con.dist < -tolerance:
                return True
        return False


# ----------------------------------------------------------------------------- sensor noise
def apply_image_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Camera sensor noise on a `[H, W, 3]` uint8 frame: Gaussian (all levels), salt-and-pepper (>=3), blur (>=4)."""
    out = image.astype(np.float32)
    out += rng.normal(0.0, 5.0 * severity, size=out.shape)
    if severity >= 3:
        mask = rng.random(out.shape[:2]) < 0.004 * severity
        out[mask] = rng.choice([0.0, 255.0], size=(int(mask.sum()), 1))
    if severity >= 4:
        radius = severity - 3  # 3x3 box blur at 4, 5x5 at 5
        padded = np.pad(out, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
        acc = np.zeros_like(out)
        for dy in range(2 * radius + 1):
            for dx in range(2 * radius + 1):
                acc += padded[dy : dy + out.shape[0], dx : dx + out.shape[1]]
        out = acc / (2 * radius + 1) ** 2
    return np.clip(out, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- language
_SYNONYMS: dict[str, list[str]] = {
    "pick up": ["grab", "take", "lift", "get"],
    "place": ["put", "set", "drop", "leave"],
    "put": ["place", "set", "move", "position"],
    "open": ["pull open", "open up"],
    "close": ["shut", "push closed"],
    "turn on": ["switch on", "power on"],
    "turn off": ["switch off", "power off"],
    "push": ["shove", "slide"],
    "basket": ["wicker basket", "basket container"],
    "plate": ["dish", "serving plate"],
    "bowl": ["dish bowl", "small bowl"],
    "drawer": ["drawer compartment"],
    "cabinet": ["cupboard"],
    "stove": ["cooktop", "burner"],
}
_PARAPHRASES = [
    "please {}.",
    "could you {}?",
    "your task is to {}.",
    "i need you to {}.",
    "go ahead and {}.",
]
_DISTRACTORS = [
    "there are several items on the table",
    "the room is quiet today",
    "ignore the other objects",
    "be careful not to knock anything over",
    "take your time",
    "the lights are on in the kitchen",
    "someone left things lying around",
]


def rewrite_instruction(instruction: str, severity: int, rng: np.random.Generator) -> str:
    """Rewrite an instruction at a severity level: 1 synonyms, 2 + paraphrase template, 3 + one distracting clause,
    4 + two clauses, 5 + two clauses and every synonym replaced. The task it asks for stays the same."""
    text = instruction.strip().lower()
    replace_probability = 1.0 if severity >= 5 else 0.6
    # Longest phrases first so that "pick up" is replaced before "put"/"up".
    for phrase in sorted(_SYNONYMS, key=len, reverse=True):
        if f" {phrase} " in f" {text} " and rng.random() < replace_probability:
            choice = str(rng.choice(_SYNONYMS[phrase]))
            text = f" {text} ".replace(f" {phrase} ", f" {choice} ", 1).strip()
    if severity >= 2:
        text = str(rng.choice(_PARAPHRASES)).format(text)
    if severity >= 3:
        count = 1 if severity == 3 else 2
        clauses = rng.choice(_DISTRACTORS, size=count, replace=False)
        prefix = ", and ".join(str(c) for c in clauses)
        text = f"{prefix}; {text}"
    if text == instruction.strip().lower():  # severity 1 with no known phrase: still perturb
        text = f"{text}, please"
    return text
