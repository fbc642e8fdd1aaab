"""PEFT type names for the registered architectures, added to `peft.PeftType` at import time.

`peft.utils.register_peft_method` accepts only names listed in the `PeftType` enum, and PEFT has no public
way to extend it; `peft_type(arch)` adds one member per architecture (value = the upper-case name, as for
PEFT's own types), so an `adapter_config.json` reads `"peft_type": "TALKLORA"` and PEFT's loaders find
the registered config class by that value.
"""

from __future__ import annotations

from typing import Any


def peft_type(arch: str) -> Any:
    """The `PeftType` member of a routed architecture, created on first use."""
    from peft.utils.peft_types import PeftType

    name = arch.upper()
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    object.__setattr__(member, "__objclass__", PeftType)  # as Enum sets it on its own members
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)
    return member
