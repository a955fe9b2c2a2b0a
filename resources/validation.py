"""Validators for identifiers that reach Redis keys, lake paths or SQL.

Every value that comes from outside (a campaign file name, a signup's ``user_id``, a
partition key typed into the UI or the CLI) passes through one of these before it is used
to build a key or a path. Each returns the value unchanged when it is valid and raises
``ValueError`` with a message that names the field, shows the offending value and says what
is allowed, so an operator can fix the input instead of reading a stack trace.

Allowed identifiers are one path segment: letters, digits and ``_ - .`` (plus ``@ +`` for
user ids), starting with a letter or digit, without ``..``, slashes, whitespace, control
characters or ``:`` (the Redis key separator).
"""

from __future__ import annotations

import re
from datetime import date

CAMPAIGN_ID_MAX = 64
USER_ID_MAX = 128
DEVICE_ID_MAX = 128

_CAMPAIGN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]*")
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DAILY_KEY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "...'"


def _problem(value: str) -> str | None:
    if value == "":
        return "it is empty"
    if value != value.strip():
        return "it has leading or trailing whitespace"
    if any(c.isspace() for c in value):
        return "it contains whitespace"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "it contains control characters"
    if "/" in value or "\\" in value:
        return "it contains a path separator ('/' or '\\')"
    if ".." in value:
        return "it contains '..'"
    if ":" in value:
        return "it contains ':' (the Redis key separator)"
    return None


def validate_identifier(value: object, field: str, pattern: re.Pattern[str], max_len: int) -> str:
    """Return ``value`` if it is a safe identifier matching ``pattern``; raise ``ValueError``."""
    if not isinstance(value, str):
        raise ValueError(f"invalid {field} {_describe(value)}: expected a string")
    reason = _problem(value)
    if reason is None and len(value) > max_len:
        reason = f"it is longer than {max_len} characters"
    if reason is None and not pattern.fullmatch(value):
        reason = "it has characters outside the allowed set"
    if reason is not None:
        raise ValueError(
            f"invalid {field} {_describe(value)}: {reason}; allowed: {pattern.pattern} "
            f"(at most {max_len} characters, no '..')"
        )
    return value


def validate_campaign_id(value: object) -> str:
    """A campaign id as used in ``reference/campaigns/<id>.json`` and ``campaign_id=<id>/``."""
    return validate_identifier(value, "campaign id", _CAMPAIGN_ID, CAMPAIGN_ID_MAX)


def validate_user_id(value: object) -> str:
    """A signup's ``user_id`` (Redis stream field, per-applicant partition key)."""
    return validate_identifier(value, "user id", _USER_ID, USER_ID_MAX)


def validate_device_id(value: object) -> str:
    """A pseudonymous device id used as a key or a path segment."""
    return validate_identifier(value, "device id", _DEVICE_ID, DEVICE_ID_MAX)


def validate_daily_partition_key(value: object) -> str:
    """A daily partition key ``YYYY-MM-DD`` that is a real calendar date."""
    if not isinstance(value, str) or not _DAILY_KEY.fullmatch(value):
        raise ValueError(f"invalid partition key {_describe(value)}: expected a day as YYYY-MM-DD")
    try:
        date.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"invalid partition key {_describe(value)}: {exc}") from None
    return value


def validate_partition_key(value: object) -> str:
    """A partition key of any platform partitioning: a day, or a campaign/user id segment."""
    if isinstance(value, str) and _DAILY_KEY.fullmatch(value):
        return validate_daily_partition_key(value)
    return validate_identifier(value, "partition key", _USER_ID, USER_ID_MAX)
