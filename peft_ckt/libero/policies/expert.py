"""A scripted pick-and-place expert that reads simulator state (object poses) and commands OSC delta poses.

It solves the goals `(In obj region)` and `(On obj target)` of LIBERO's BDDL files: the `libero_object` suite and
the pick-and-place tasks of the other suites. Phases: move above the object with the gripper aligned to its narrow
side, descend, close, lift clear of the target, carry, lower, open, retreat. Each phase is a proportional controller
on the end-effector position and yaw (the gripper keeps pointing down). Phases time out, so a failed grasp is
retried from the approach instead of stalling the episode.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import LiberoPolicy

_POS_SCALE = 0.05  # metres per unit action (OSC output_max)
_ROT_SCALE = 0.5  # radians per unit action


def _quat_xyzw_to_mat(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _rotation_vector(rot: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix."""
    cos = np.clip((np.trace(rot) - 1) / 2, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    norm = np.linalg.norm(axis)
    if norm < 1e-9:  # angle ~ pi
        w, v = np.linalg.eigh((rot + np.eye(3)) / 2)
        return v[:, -1] * angle
    return axis / norm * angle


def _wrap_half_turn(angle: float) -> float:
    """Wrap to (-pi/2, pi/2]: a parallel gripper is symmetric under a half turn."""
    return (angle + np.pi / 2) % np.pi - np.pi / 2


class ScriptedExpertPolicy(LiberoPolicy):
    """Privileged-state pick-and-place expert (needs `LiberoEnv(privileged=True)`; no images).

    Args:
        approach_height: height above the object top where the descent starts (m).
        carry_clearance: clearance of the object's bottom above the target's top while carrying (m).
        grasp_depth: how far below the object's top the fingertips close, capped at the object's middle (m).
        gain: proportional gain (actions per metre of error, before clipping to [-1, 1]).
        max_action: the largest translation action (limits speed, which keeps grasps stable).
    """

    name = "scripted"
    needs_images = False
    needs_privileged = True

    def __init__(
        self,
        approach_height: float = 0.06,
        carry_clearance: float = 0.06,
        grasp_depth: float = 0.035,
        gain: float = 12.0,
        max_action: float = 0.6,
    ) -> None:
        super().__init__()
        self.approach_height = approach_height
        self.carry_clearance = carry_clearance
        self.grasp_depth = grasp_depth
        self.gain = gain
        self.max_action = max_action
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.phase = "approach"
        self.phase_steps = 0
        self.attempts = 0
        self._down_rot: np.ndarray | None = None
        self._grasp_yaw = 0.0
        self._grasp_offset_xy = np.zeros(2)  # grasp point relative to the object's centre
        self._grasp_offset_z = 0.0  # eef height minus object bottom at grasp time
        self._rest_bottom = 0.0  # object bottom height before lifting
        self._rim_grasp = False  # wide objects (bowls, plates) are grasped by the rim
        self._current_goal: tuple[str, str, str] | None = None

    # ------------------------------------------------------------------ goal parsing
    @staticmethod
    def _goal(privileged: dict[str, Any]) -> tuple[str, str, str]:
        """The first (In obj region) / (On obj target) goal predicate that does not hold yet."""
        goals = privileged["goal"]
        holds = privileged.get("goal_satisfied") or [None] * len(goals)
        candidates = [
            (predicate, done)
            for predicate, done in zip(goals, holds)
            if len(predicate) == 3 and predicate[0].lower() in ("in", "on")
        ]
        if not candidates:
            raise ValueError(f"The scripted expert handles (In obj region) / (On obj target) goals; got {goals}")
        predicate = next((p for p, done in candidates if not done), candidates[-1][0])
        return predicate[0].lower(), predicate[1], predicate[2]

    @staticmethod
    def _target_xy_top(privileged: dict[str, Any], target: str) -> tuple[np.ndarray, float]:
        """Where to release: the target's centre (x, y) and the height of its top (or of its region)."""
        objects, regions = privileged["objects"], privileged["regions"]
        if target in regions:
            owners = [name for name in objects if target.startswith(name + "_")]
            owner = max(owners, key=len) if owners else None
            if owner is not None and not objects[owner].get("fixture", False):
                # A movable receptacle (basket, bowl): its centre and rim, wherever it has been pushed.
                box = objects[owner]
                return (box["aabb_min"][:2] + box["aabb_max"][:2]) / 2, float(box["aabb_max"][2])
            region = regions[target]
            return np.array(region["pos"][:2]), float(region["pos"][2])
        if target in objects:
            box = objects[target]
            return (box["aabb_min"][:2] + box["aabb_max"][:2]) / 2, float(box["aabb_max"][2])
        raise ValueError(f"Goal target {target!r} is neither an object nor a region of the scene")

    def _plan_grasp(self, priv: dict[str, Any], obj_name: str, grasp_z: float) -> tuple[float, np.ndarray]:
        """Choose the gripper yaw and grasp point that keep fingers and hand farthest from neighbouring objects.

        Boxes are grasped across their narrow side (the long side may not fit between the fingers), along which the
        grasp point may slide; round objects admit any yaw. Later attempts take the next-best candidate.
        """
        box = priv["objects"][obj_name]
        half = box["box_half_local"]
        rot = box["xmat"]
        horizontal = sorted(np.argsort(np.abs(rot[2, :]))[:2], key=lambda i: half[i])
        narrow, long = horizontal
        elongated = half[long] > 1.25 * half[narrow]
        narrow_dir = rot[:, narrow]
        long_dir = rot[:, long][:2] / (np.linalg.norm(rot[:, long][:2]) + 1e-9)
        base_yaw = float(np.arctan2(narrow_dir[1], narrow_dir[0]))
        # Wide and flat (bowls, plates: wider than the open fingers): take the rim. Cans and bottles are tall.
        width, height = 2 * half[narrow], float(box["aabb_max"][2] - box["aabb_min"][2])
        self._rim_grasp = width > 0.075 and height < 0.6 * width
        if self._rim_grasp:
            yaws = [base_yaw + k * np.pi / 4 for k in range(8)]
            slides = [0.0]
        elif elongated:
            yaws = [base_yaw]
            slide_limit = max(0.0, half[long] - 0.02)
            slides = [s for s in (0.0, 0.012, -0.012, 0.024, -0.024) if abs(s) <= slide_limit]
        else:
            yaws = [base_yaw + k * np.pi / 6 for k in range(6)]
            slides = [0.0]
        others = [
            (o["aabb_min"], o["aabb_max"])
            for name, o in priv["objects"].items()
            if name != obj_name and o["aabb_max"][2] > grasp_z - 0.01
        ]
        candidates = []
        for yaw in yaws:
            finger_dir = np.array([np.cos(yaw), np.sin(yaw)])
            for slide in slides:
                if self._rim_grasp:
                    offset = (half[narrow] - 0.012) * finger_dir
                    reach = 0.03
                else:
                    offset = slide * long_dir if elongated else np.zeros(2)
                    reach = half[narrow] + 0.02
                center = (box["aabb_min"][:2] + box["aabb_max"][:2]) / 2 + offset
                # Finger pads just outside the object at fingertip height, hand ends 5 cm higher.
                probes = [(center + sign * reach * finger_dir, grasp_z) for sign in (-1, 1)]
                probes += [(center + sign * 0.09 * finger_dir, grasp_z + 0.05) for sign in (-1, 1)]
                clearance = 0.1
                for lo, hi in others:
                    for point, height in probes:
                        if hi[2] < height:
                            continue
                        gap = np.maximum(np.maximum(lo[:2] - point, point - hi[:2]), 0.0)
                        clearance = min(clearance, float(np.linalg.norm(gap)))
                # Prefer clearance, then a centred grasp, then the smallest turn of the wrist.
                score = min(clearance, 0.03) - 0.2 * abs(slide) - 0.005 * abs(_wrap_half_turn(yaw - np.pi / 2))
                candidates.append((score, yaw, offset))
        candidates.sort(key=lambda c: -c[0])
        _, yaw, offset = candidates[min(self.attempts, len(candidates) - 1)]
        # The fingers close along the gripper's y axis, which points along world -y at yaw 0.
        return _wrap_half_turn(yaw - np.pi / 2), offset

    # ------------------------------------------------------------------ control
    def _move(
        self, eef: np.ndarray, eef_rot: np.ndarray, target: np.ndarray, gripper: float, max_action: float | None = None
    ) -> np.ndarray:
        action = np.zeros(7, dtype=np.float32)
        limit = self.max_action if max_action is None else max_action
        delta = np.clip(self.gain * (target - eef), -limit, limit)
        action[:3] = delta
        # Orientation: gripper down, fingers closing along the grasp yaw.
        desired = self._desired_rot()
        error = _rotation_vector(desired @ eef_rot.T)
        action[3:6] = np.clip(error / _ROT_SCALE * 2.0, -0.5, 0.5)
        action[6] = gripper
        return action

    def _desired_rot(self) -> np.ndarray:
        assert self._down_rot is not None
        c, s = np.cos(self._grasp_yaw), np.sin(self._grasp_yaw)
        yaw = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return yaw @ self._down_rot

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self.phase_steps = 0

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        if "privileged" not in observation:
            raise KeyError("ScriptedExpertPolicy needs observation['privileged']: create LiberoEnv(privileged=True)")
        priv = observation["privileged"]
        goal_predicate = self._goal(priv)
        if goal_predicate != self._current_goal:
            if self._current_goal is not None:  # previous goal done: start on the next object
                self._set_phase("approach")
                self.attempts = 0
            self._current_goal = goal_predicate
        _, obj_name, target = goal_predicate
        eef = np.asarray(priv["eef_pos"], dtype=np.float64)
        eef_rot = _quat_xyzw_to_mat(np.asarray(priv["eef_quat_xyzw"], dtype=np.float64))
        if self._down_rot is None:
            # Straight down, fingers along world y: the pose the Panda starts in, without its small tilt.
            self._down_rot = np.diag([1.0, -1.0, -1.0])
        box = priv["objects"][obj_name]
        obj_center = (box["aabb_min"] + box["aabb_max"]) / 2
        obj_top, obj_bottom = float(box["aabb_max"][2]), float(box["aabb_min"][2])
        target_xy, target_top = self._target_xy_top(priv, target)
        finger_gap = float(np.sum(np.abs(priv["gripper_qpos"])))
        self.phase_steps += 1

        grasp_z = max(obj_top - self.grasp_depth, obj_bottom + 0.5 * (obj_top - obj_bottom), obj_bottom + 0.01)
        if self.phase == "approach":
            if self.phase_steps == 1:
                self._grasp_yaw, self._grasp_offset_xy = self._plan_grasp(priv, obj_name, grasp_z)
            grasp_xy = obj_center[:2] + self._grasp_offset_xy
            goal = np.array([grasp_xy[0], grasp_xy[1], obj_top + self.approach_height])
            if np.linalg.norm(goal[:2] - eef[:2]) > 0.03:
                goal[2] = max(goal[2], eef[2])  # travel at height, descend only above the object
            yaw_error = np.linalg.norm(_rotation_vector(self._desired_rot() @ eef_rot.T))
            if (np.linalg.norm(goal[:2] - eef[:2]) < 0.01 and abs(goal[2] - eef[2]) < 0.03 and yaw_error < 0.1) or (
                self.phase_steps > 60
            ):
                self._set_phase("descend")
            return self._move(eef, eef_rot, goal, -1.0)

        if self._rim_grasp:
            grasp_z = obj_top - 0.02
        if self.phase == "descend":
            grasp_xy = obj_center[:2] + self._grasp_offset_xy
            goal = np.array([grasp_xy[0], grasp_xy[1], grasp_z])
            if abs(eef[2] - grasp_z) < 0.008 or self.phase_steps > 50:
                self._set_phase("close")
            return self._move(eef, eef_rot, goal, -1.0)

        if self.phase == "close":
            goal = np.array([eef[0], eef[1], eef[2]])
            if self.phase_steps >= 12:
                self._grasp_offset_z = float(eef[2] - obj_bottom)
                self._rest_bottom = obj_bottom
                self._set_phase("lift")
            return self._move(eef, eef_rot, goal, 1.0)

        # Carry above the target, and in any case well above where the object rested (it may start higher).
        carry_z = max(target_top + self.carry_clearance, self._rest_bottom + 0.08) + self._grasp_offset_z
        if self.phase == "lift":
            goal = np.array([eef[0], eef[1], carry_z])
            if eef[2] > carry_z - 0.02 or self.phase_steps > 60:
                self._set_phase(
                    "carry"
                    if self._holding(obj_center[:2] + self._grasp_offset_xy, obj_bottom, eef, finger_gap)
                    else "regrasp"
                )
            return self._move(eef, eef_rot, goal, 1.0)

        # Bring the object's centre, not the gripper, over the target (measured live: objects shift in the grasp).
        place_xy = target_xy + (eef[:2] - obj_center[:2])
        if self.phase == "carry":
            goal = np.array([place_xy[0], place_xy[1], carry_z])
            if np.linalg.norm(goal[:2] - eef[:2]) < 0.015 or self.phase_steps > 100:
                self._set_phase("lower")
            if not self._holding(obj_center[:2] + self._grasp_offset_xy, obj_bottom, eef, finger_gap):
                self._set_phase("regrasp")
            return self._move(eef, eef_rot, goal, 1.0, max_action=1.0)  # travel fast, the grasp is checked

        if self.phase == "lower":
            release_z = target_top + 0.01 + self._grasp_offset_z
            goal = np.array([place_xy[0], place_xy[1], release_z])
            if eef[2] < release_z + 0.015 or self.phase_steps > 40:
                self._set_phase("release")
            return self._move(eef, eef_rot, goal, 1.0)

        if self.phase == "release":
            goal = np.array([eef[0], eef[1], eef[2]])
            if self.phase_steps >= 10:
                self._set_phase("retreat")
            return self._move(eef, eef_rot, goal, -1.0)

        if self.phase == "regrasp":
            goal = np.array([eef[0], eef[1], obj_top + self.approach_height + 0.04])
            if self.phase_steps >= 15:
                self.attempts += 1
                self._set_phase("approach")
            return self._move(eef, eef_rot, goal, -1.0)

        # retreat: rise and wait (the episode ends on success)
        goal = np.array([eef[0], eef[1], carry_z + 0.05])
        return self._move(eef, eef_rot, goal, -1.0)

    def _holding(self, grasp_xy: np.ndarray, obj_bottom: float, eef: np.ndarray, finger_gap: float) -> bool:
        """The object is between the fingers: near the gripper, off its resting height, fingers not shut."""
        near = np.linalg.norm(grasp_xy - eef[:2]) < 0.05
        lifted = obj_bottom > self._rest_bottom + 0.02
        return bool(near and lifted and finger_gap > 0.002)
