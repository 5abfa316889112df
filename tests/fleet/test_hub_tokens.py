"""Join token wire form and checks (pure)."""

from __future__ import annotations

import pytest

from edgebox.fleet import tokens
from edgebox.fleet.tokens import JoinToken, TokenError, TokenState

FP = "sha256:" + "ab" * 32


def test_token_round_trips_as_one_line() -> None:
    token = JoinToken(("https://hub.example:8443", "https://10.0.0.2:8443"), FP, "tok_1", "s3cr3t")
    line = tokens.encode(token)
    assert line.startswith("ebx1_") and "\n" not in line and " " not in line
    assert tokens.parse("  " + line + "\n") == token
    assert "s3cr3t" not in repr(token)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("abc.def", "not an edgebox join token"),
        ("ebx1_eyJ1IjpbXX0", "secret after the '.' is missing"),
        ("ebx1_!!!.topsecret", "cannot be read"),
        (tokens.encode(JoinToken(("http://plain:80",), FP, "t", "topsecret")), "https://"),
        (tokens.encode(JoinToken(("https://h:1",), "md5:00", "t", "topsecret")), "fingerprint"),
    ],
)
def test_bad_lines_are_named_without_the_secret(line: str, says: str) -> None:
    with pytest.raises(TokenError, match=says) as caught:
        tokens.parse(line)
    assert "topsecret" not in str(caught.value)


def test_state_order_revoked_then_used_then_expired() -> None:
    assert tokens.state(expires_at=10, used_at=None, revoked_at=None, now=5) is TokenState.VALID
    assert tokens.state(expires_at=10, used_at=None, revoked_at=None, now=10) is TokenState.EXPIRED
    assert tokens.state(expires_at=10, used_at=3, revoked_at=None, now=20) is TokenState.USED
    assert tokens.state(expires_at=10, used_at=3, revoked_at=4, now=20) is TokenState.REVOKED


def test_secrets_are_stored_hashed_and_compared() -> None:
    secret = tokens.new_secret()
    stored = tokens.hash_secret(secret)
    assert secret not in stored and len(stored) == 64
    assert tokens.secret_matches(secret, stored)
    assert not tokens.secret_matches(secret + "x", stored)


def test_durations() -> None:
    assert tokens.parse_duration("30m") == 1800
    assert tokens.parse_duration("90") == 90
    assert tokens.parse_duration("2h") == 7200
    for bad in ("", "soon", "0s", "-5m"):
        with pytest.raises(ValueError):
            tokens.parse_duration(bad)
