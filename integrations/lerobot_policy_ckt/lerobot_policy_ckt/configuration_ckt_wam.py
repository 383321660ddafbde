"""Moved to `peft_ckt.integrations.lerobot.configuration_ckt_wam`; this name stays importable."""

from peft_ckt.integrations.lerobot.configuration_ckt_wam import *  # noqa: F403
