"""Measure LIBERO simulation and rendering speed on this machine: `peft-ckt libero-speed`.

Reports env creation time, reset time, physics steps/s (no rendering), rendered steps/s with two cameras (fast
renderer settings and LIBERO's defaults), and the cost of one camera frame.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def _rate(fn, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return count / (time.perf_counter() - start)


def measure_speed(
    suite: str = "libero_object", task_id: int = 0, image_size: int = 128, steps: int = 100, render_steps: int = 20
) -> dict[str, float | int | str]:
    from .env import LiberoEnv
    from .runtime import configure_libero

    backend = configure_libero().gl_backend
    action = np.array([0.1, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    results: dict[str, float | int | str] = {"suite": suite, "task_id": task_id, "image_size": image_size}
    results["gl_backend"] = backend
    for fast in (True, False):
        start = time.perf_counter()
        env = LiberoEnv(suite, task_id, image_size=image_size, render_images=False, fast_render=fast)
        creation = time.perf_counter() - start
        try:
            if fast:
                results["env_creation_s"] = round(creation, 2)
                start = time.perf_counter()
                env.reset(0)
                results["reset_with_settle_s"] = round(time.perf_counter() - start, 3)
                results["physics_steps_per_s"] = round(_rate(lambda e=env: e.step(action), steps), 1)
            else:
                env.reset(0)
            label = "fast" if fast else "default"
            env.render_images = True
            results[f"rendered_steps_per_s_2cams_{label}"] = round(
                _rate(lambda e=env: e.step(action), render_steps), 2
            )
            results[f"frames_per_s_1cam_{label}"] = round(_rate(lambda e=env: e.render("image"), render_steps), 2)
        finally:
            env.close()
    return results


if __name__ == "__main__":  # the old entry point, `python -m peft_ckt.libero.speed`: now a peft-ckt subcommand
    from ..commands import main

    sys.exit(main(["libero-speed", *sys.argv[1:]]))
