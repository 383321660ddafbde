"""Moved to `peft_ckt.integrations.lerobot.modeling_ckt_wam`; this name stays importable."""

from peft_ckt.integrations.lerobot.modeling_ckt_wam import *  # noqa: F403
