"""The message protocol's pure functions."""

from __future__ import annotations

import json

import pytest

from realtime import wire


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "not_an_object"),
        ('"ping"', "not_an_object"),
        ("{}", "missing_type"),
        ('{"type": "launch"}', "unknown_type"),
        ('{"type": 7}', "unknown_type"),
        ("[" * 100_000 + "]" * 100_000, "invalid_json"),
        ('{"type": "ping", "n": ' + "9" * 5000 + "}", "invalid_json"),
    ],
)
def test_it_refuses_bad_messages_with_a_code(text, code):
    with pytest.raises(wire.ProtocolError) as info:
        wire.parse_client_message(text)
    assert info.value.code == code
    assert info.value.detail


def test_it_accepts_ping_with_extra_fields():
    assert wire.parse_client_message('{"type": "ping", "id": 3}')["type"] == "ping"


def test_welcome_says_secure_only_for_wss():
    tls = {"tls_version": "TLSv1.3", "cipher_suite": "TLS_AES_128_GCM_SHA256"}
    secure = json.loads(wire.welcome(scheme="wss", worker="w1", user=None, tls=tls))
    plain = json.loads(wire.welcome(scheme="ws", worker="w1", user="alice", tls=None))
    assert secure["secure"] is True
    assert secure["tls"] == {"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256"}
    assert plain["secure"] is False
    assert plain["tls"] is None
    assert plain["user"] == "alice"
