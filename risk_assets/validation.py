"""Signup validation and applicant partition keys (pure, no Dagster).

A ``signups`` entry (see CONTRACTS) is valid when it has a non-empty ``user_id`` and a JSON
object ``payload`` with the required fields of the right types. Anything else is dead-lettered
with the first reason found.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

REQUIRED_FIELDS: dict[str, str] = {
    "business_name": "str",
    "industry": "str",
    "years_in_business": "number",
    "annual_revenue": "number",
    "requested_amount": "number",
    "country": "str",
}
PARTITION_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,120}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9.\-]+")
_SIGNUP_ID_RE = re.compile(r"^\d+-\d+$")


@dataclass(frozen=True)
class Verdict:
    """The outcome of validating one signup: ``application`` when valid, else ``reason``."""

    application: dict[str, Any] | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.application is not None


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def validate_signup(signup_id: str, fields: dict[str, str] | None) -> Verdict:
    """Check one ``signups`` entry; the application is the payload plus ids, normalised."""
    if not fields:
        return Verdict(None, "entry has no fields (deleted from the stream?)")
    user_id = fields.get("user_id")
    if user_id is None:
        return Verdict(None, "missing user_id")
    if not user_id.strip():
        return Verdict(None, "empty user_id")
    raw = fields.get("payload")
    if raw is None:
        return Verdict(None, "missing payload")
    try:
        payload = json.loads(raw)
    except (TypeError, ValueError) as exc:
        return Verdict(None, f"payload is not valid JSON: {exc.__class__.__name__}")
    if not isinstance(payload, dict):
        return Verdict(None, f"payload is not a JSON object (got {type(payload).__name__})")
    missing = [name for name in REQUIRED_FIELDS if name not in payload]
    if missing:
        return Verdict(None, f"payload missing field(s): {', '.join(missing)}")
    for name, kind in REQUIRED_FIELDS.items():
        value = payload[name]
        if kind == "str" and not (isinstance(value, str) and value.strip()):
            return Verdict(None, f"{name} must be a non-empty string")
        if kind == "number" and not _is_number(value):
            return Verdict(None, f"{name} must be a number")
    if not re.fullmatch(r"[A-Za-z]{2}", payload["country"]):
        return Verdict(None, "country must be an ISO 3166 alpha-2 code")
    for name in ("years_in_business", "annual_revenue"):
        if payload[name] < 0:
            return Verdict(None, f"{name} must not be negative")
    if payload["requested_amount"] <= 0:
        return Verdict(None, "requested_amount must be positive")
    application = {
        **payload,
        "country": payload["country"].upper(),
        "user_id": user_id,
        "signup_id": signup_id,
        "partition_key": partition_key(user_id, signup_id),
    }
    return Verdict(application)


def partition_key(user_id: str, signup_id: str) -> str:
    """``<user slug>_<signup id>``: unique per signup, no spaces, newlines or slashes."""
    if not _SIGNUP_ID_RE.fullmatch(signup_id):
        raise ValueError(f"not a stream entry id: {signup_id!r}")
    slug = _UNSAFE.sub("-", user_id.strip()).strip("-.")[:60] or "user"
    key = f"{slug}_{signup_id}"
    if not PARTITION_KEY_RE.fullmatch(key):
        raise ValueError(f"invalid partition key {key!r}")
    return key


def signup_id_of(partition: str) -> str:
    """The ``signups`` entry id a partition key was made from."""
    signup_id = partition.rsplit("_", 1)[-1]
    if not _SIGNUP_ID_RE.fullmatch(signup_id):
        raise ValueError(f"partition {partition!r} does not end with a signup id")
    return signup_id
