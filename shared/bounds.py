"""Bounds every untrusted body must keep before a domain sees it (DESIGN §11, "edges validate"):
no control characters in any string or key, and free-form values (configs, metadata) nested at
most DEPTH_MAX deep. Field-specific bounds (ids, label counts, lengths, ranges) stay with the types
and domains that own them."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from shared.errors import Invalid

DEPTH_MAX = 32  # objects and arrays nested in one free-form value
# C0 controls and DEL; tab, newline and carriage return are allowed (free text and config values).
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# JSON carries a C0 control character in a string as an escape (\u0001, \b, \f); DEL, and C0 from
# lax encoders, may come raw. A cheap first look at the raw bytes; a hit (which may be a false one,
# e.g. an escaped backslash before "b") is confirmed by walking the decoded body.
_ESCAPED_CONTROL = re.compile(rb"\\(?:u00(?:0[0-8bBcCeEfF]|1[0-9a-fA-F]|7[fF])|[bf])|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_no_control(data: bytes) -> None:
    """Raise Invalid naming the first string or key of a JSON body that holds a control character.
    Scans the raw JSON first, so a clean body costs one regex; only a suspect one is walked."""
    if _ESCAPED_CONTROL.search(data) is None:
        return
    stack: list[tuple[Any, str]] = [(msgspec.json.decode(data), "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if CONTROL.search(item):
                raise Invalid("holds a control character", field=path or "body")
        elif isinstance(item, dict):
            for key, inner in item.items():
                if isinstance(key, str) and CONTROL.search(key):
                    raise Invalid("a key holds a control character", field=path or "body")
                stack.append((inner, f"{path}.{key}" if path else str(key)))
        elif isinstance(item, list):
            stack.extend((inner, f"{path}[{index}]") for index, inner in enumerate(item))


def check_depth(value: Any, field: str) -> None:
    """Raise Invalid when a free-form value nests objects/arrays deeper than DEPTH_MAX."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= DEPTH_MAX:
                raise Invalid(f"nests deeper than {DEPTH_MAX} levels", field=field)
            stack.extend((inner, depth + 1) for inner in (item.values() if isinstance(item, dict) else item))
