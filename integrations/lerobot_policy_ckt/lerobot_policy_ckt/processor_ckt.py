"""Moved to `peft_ckt.integrations.lerobot.processor_ckt`; this name stays importable."""

from peft_ckt.integrations.lerobot.processor_ckt import *  # noqa: F403
