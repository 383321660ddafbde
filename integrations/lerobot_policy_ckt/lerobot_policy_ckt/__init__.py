"""LeRobot policies from peft-ckt, found by LeRobot's plugin discovery (`lerobot_policy_*` distributions).

- `--policy.type=ckt_wam`: peft-ckt's world action model (`peft_ckt.wam.WorldActionModel`) as a LeRobot policy.
- `--policy.type=ckt`: a frozen student policy that learns from a frozen teacher policy through a CKT adapter
  (both loaded from LeRobot policy folders: `--policy.student_path`, `--policy.teacher_path`).

Importing this package registers both config types with LeRobot (`PreTrainedConfig.register_subclass`); LeRobot
then finds `modeling_*` and `processor_*` by its naming convention.
"""

from .configuration_ckt import CKTConfig
from .configuration_ckt_wam import CKTWamConfig

__all__ = ["CKTConfig", "CKTWamConfig"]
