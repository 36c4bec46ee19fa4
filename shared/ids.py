"""Identifier and label rules of DESIGN §3, and the event id generator (UUIDv7)."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
import uuid_utils

from shared.errors import Invalid

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
LABEL_KEY_RE = re.compile(r"^[a-z0-9]([a-z0-9._/-]{0,62})$")
LABEL_VALUE_MAX = 256
LABELS_MAX = 64
Id = Annotated[str, msgspec.Meta(pattern=ID_RE.pattern)]  # the id rule, checked while decoding
ID_RULE = "not a valid id: use 1-128 characters from A-Z a-z 0-9 _ -, starting with a letter or digit"


def check_id(value: object, field: str) -> str:
    """Return `value` if it is a subject-safe id, else raise Invalid naming `field`."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise Invalid(f"{value!r} is {ID_RULE}", field=field)
    return value


def check_label(key: str, value: str, field: str = "labels") -> None:
    """Raise Invalid unless `key=value` is a valid label."""
    if not LABEL_KEY_RE.fullmatch(key):
        raise Invalid(
            f"label key {key!r} must match {LABEL_KEY_RE.pattern} "
            "(lower-case letters, digits, and . _ / - after the first character)",
            field=f"{field}.{key}" if key else field,
        )
    if len(value) > LABEL_VALUE_MAX:
        raise Invalid(f"label value is longer than {LABEL_VALUE_MAX} characters", field=f"{field}.{key}")
    if not value.isprintable():
        raise Invalid("label value holds a control character", field=f"{field}.{key}")


def check_labels(labels: dict[str, str], field: str = "labels") -> dict[str, str]:
    """Validate every label of a mapping (and how many there are) and return it."""
    if len(labels) > LABELS_MAX:
        raise Invalid(f"{len(labels)} labels; at most {LABELS_MAX} are allowed", field=field)
    for key, value in labels.items():
        check_label(key, value, field)
    return labels


def parse_label(text: str, field: str = "labels") -> tuple[str, str]:
    """Parse one `key=value` label as given on a command line."""
    key, sep, value = text.partition("=")
    if not sep:
        raise Invalid(f"{text!r} is not key=value", field=field)
    check_label(key, value, field)
    return key, value


def new_event_id() -> str:
    """A time-ordered UUIDv7 for an event (also its Nats-Msg-Id)."""
    return str(uuid_utils.uuid7())


def new_command_id() -> str:
    """A fresh idempotency key for a command sent by a client."""
    return str(uuid_utils.uuid7())
