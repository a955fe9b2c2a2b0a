"""Signup validation: every malformed shape gets a reason; partition keys are safe and unique."""

import json

import pytest

from risk_assets.validation import partition_key, signup_id_of, validate_signup

GOOD = {
    "business_name": "Acme Tiles",
    "industry": "construction",
    "years_in_business": 4,
    "annual_revenue": 850000,
    "requested_amount": 60000,
    "country": "us",
}


def entry(**payload_overrides):
    return {"user_id": "u-1", "payload": json.dumps({**GOOD, **payload_overrides})}


def test_valid_signup_becomes_an_application_with_ids_and_partition() -> None:
    verdict = validate_signup("1700000000000-0", entry())
    assert verdict.ok
    app = verdict.application
    assert app["country"] == "US"
    assert app["signup_id"] == "1700000000000-0"
    assert app["partition_key"] == "u-1_1700000000000-0"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"payload": json.dumps(GOOD)}, "missing user_id"),
        ({"user_id": "  ", "payload": json.dumps(GOOD)}, "empty user_id"),
        ({"user_id": "u"}, "missing payload"),
        ({"user_id": "u", "payload": "{not json"}, "payload is not valid JSON"),
        ({"user_id": "u", "payload": "[1, 2]"}, "payload is not a JSON object"),
        (
            {"user_id": "u", "payload": json.dumps({"business_name": "x"})},
            "payload missing field(s): industry, years_in_business",
        ),
        (entry(annual_revenue="850000"), "annual_revenue must be a number"),
        (entry(years_in_business=True), "years_in_business must be a number"),
        (entry(business_name=""), "business_name must be a non-empty string"),
        (entry(country="USA"), "country must be an ISO 3166 alpha-2 code"),
        (entry(requested_amount=0), "requested_amount must be positive"),
        (entry(annual_revenue=-5), "annual_revenue must not be negative"),
        ({}, "entry has no fields"),
    ],
)
def test_malformed_signup_is_rejected_with_a_reason(fields: dict, reason: str) -> None:
    verdict = validate_signup("1-0", fields)
    assert not verdict.ok
    assert verdict.reason.startswith(reason)


def test_partition_key_has_no_spaces_slashes_or_newlines_and_keeps_the_signup_id() -> None:
    key = partition_key(" ACME/ltd \n boss_1 ", "1700000000000-12")
    assert not any(c in key for c in " /\n\t\\")
    assert signup_id_of(key) == "1700000000000-12"


def test_partition_key_rejects_what_is_not_a_stream_id() -> None:
    with pytest.raises(ValueError):
        partition_key("u", "../etc")
