"""Moved to `peft_ckt.integrations.lerobot.configuration_ckt`; this name stays importable."""

from peft_ckt.integrations.lerobot.configuration_ckt import *  # noqa: F403
