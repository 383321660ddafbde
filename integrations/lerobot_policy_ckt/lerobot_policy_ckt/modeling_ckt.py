"""Moved to `peft_ckt.integrations.lerobot.modeling_ckt`; this name stays importable."""

from peft_ckt.integrations.lerobot.modeling_ckt import *  # noqa: F403
