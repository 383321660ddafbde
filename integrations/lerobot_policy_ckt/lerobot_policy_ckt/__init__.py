"""LeRobot's plugin convention for peft-ckt's policy types `ckt` and `ckt_wam`, which live in
`peft_ckt.integrations.lerobot`.

`pip install "peft-ckt[lerobot]"` alone already gives both types (peft-ckt's start-up hook registers them when
LeRobot's policy registry is imported). This distribution is for setups without that hook (`PEFT_CKT_NO_AUTOLOAD=1`,
or an interpreter that skips site-packages' `.pth` files): LeRobot imports every installed `lerobot_policy_*`
distribution at start-up, and importing this one registers the types. The old module names stay importable.
"""

from peft_ckt.integrations.lerobot import CKTConfig, CKTWamConfig

__all__ = ["CKTConfig", "CKTWamConfig"]
