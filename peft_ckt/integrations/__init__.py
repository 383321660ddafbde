"""Integrations of peft-ckt with other frameworks; each one needs its framework's extra (e.g. `lerobot`)."""
