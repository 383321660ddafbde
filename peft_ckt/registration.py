"""Registers CKT with peft: a `PeftType.CKT` enum member, then `register_peft_method`. Safe to call repeatedly."""

from __future__ import annotations

from peft.utils import PeftType

METHOD_NAME = "ckt"
PREFIX = "ckt_"


def _add_peft_type_member(name: str) -> None:
    """peft only registers methods whose name is already a `PeftType` member, so add one to the enum."""
    if name in PeftType.__members__:
        return
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    # The class attribute must exist before the member maps learn the name, else enum refuses to "reassign" it.
    type.__setattr__(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)


def register_ckt() -> None:
    """Makes "ckt" a peft method (idempotent: importing `peft_ckt` twice, or reloading it, is fine)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    from .config import CKTConfig
    from .model import CKTModel

    _add_peft_type_member(METHOD_NAME.upper())
    peft_type = PeftType[METHOD_NAME.upper()]
    if PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type) is not None:
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        # Re-import (e.g. importlib.reload): point peft at the current classes.
        PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = CKTConfig
        PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = CKTModel
        return
    register_peft_method(name=METHOD_NAME, config_cls=CKTConfig, model_cls=CKTModel, prefix=PREFIX)
