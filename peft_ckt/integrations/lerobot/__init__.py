"""LeRobot policies from peft-ckt (needs the `lerobot` extra).

- `--policy.type=ckt_wam`: peft-ckt's world action model (`peft_ckt.wam.WorldActionModel`) as a LeRobot policy.
- `--policy.type=ckt`: a frozen student policy that learns from a frozen teacher policy through a CKT adapter
  (both loaded from LeRobot policy folders: `--policy.student_path`, `--policy.teacher_path`).

Importing this package registers both config types with LeRobot (`PreTrainedConfig.register_subclass`); LeRobot
then finds `modeling_*` and `processor_*` beside `configuration_*` by its naming convention. Nobody needs to import
it by hand: peft-ckt's start-up hook (`_peft_ckt_autoload`) imports it as soon as LeRobot's policy config registry
(`lerobot.configs.policies`) is imported, which `lerobot-train`, `lerobot-eval` and every other LeRobot command do
before they parse `--policy.type` or read a saved policy's `config.json`.
"""

import os

from .configuration_ckt import CKTConfig
from .configuration_ckt_wam import CKTWamConfig


def _configure_libero() -> None:
    # Runs before LeRobot builds an env: `--env.type=libero` then finds a headless, offline LIBERO (config file and
    # assets from peft-ckt's `libero` extra) instead of stopping on LIBERO's first-run questions (configure_libero
    # keeps a LIBERO_CONFIG_PATH set by the user).
    if os.environ.get("PEFT_CKT_NO_LIBERO_SETUP", "") not in ("", "0"):
        return
    try:
        from peft_ckt.libero.runtime import LiberoUnavailableError, configure_libero
    except ImportError:
        return
    try:
        configure_libero()
    except LiberoUnavailableError:
        pass


_configure_libero()

__all__ = ["CKTConfig", "CKTWamConfig"]
