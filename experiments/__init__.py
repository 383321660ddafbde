"""Experiments run from the repository checkout (not part of the `peft_ckt` wheel)."""
