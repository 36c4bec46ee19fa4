"""Pure parts of API authentication: token text, argon2id records, allowed Host values."""

from __future__ import annotations

import pytest

from projections.api.auth import AuthPolicy, default_allowed_hosts, document_refusals
from shared.errors import Invalid
from shared.tokens import TokenVerifier, new_token, parse_token, secret_matches


def test_a_new_token_is_stored_only_as_an_argon2id_hash() -> None:
    text, record = new_token("alice", "operator", "admin:root", "2026-01-01T00:00:00.000000Z")
    parsed = parse_token(text)
    assert parsed is not None and parsed[0] == record.id
    assert record.hash.startswith("$argon2id$") and parsed[1] not in record.hash
    assert secret_matches(record, parsed[1])
    assert not secret_matches(record, parsed[1][:-1] + ("A" if parsed[1][-1] != "A" else "B"))
    other, _ = new_token("alice", "operator", "admin:root", "2026-01-01T00:00:00.000000Z")
    assert other != text


@pytest.mark.parametrize("text", ["", "fpt", "fpt__secretsecretsecret", "abc_0011_secretsecretsecretsecret",
                                  "fpt_0011_short", "fpt_a b_secretsecretsecretsecret", "fpt_" + "x" * 300])
def test_malformed_tokens_are_not_parsed(text: str) -> None:
    assert parse_token(text) is None


def test_roles_and_names_are_checked() -> None:
    with pytest.raises(Invalid) as exc:
        new_token("alice", "root", "x", "t")
    assert exc.value.field == "role"
    with pytest.raises(Invalid) as exc:
        new_token("alice smith", "viewer", "x", "t")
    assert exc.value.field == "name"


def test_allowed_hosts() -> None:
    local = AuthPolicy(TokenVerifier(None), default_allowed_hosts("http://127.0.0.1:8080"))  # type: ignore[arg-type]  # no NATS: host checks never reach it
    assert [local.host_allowed(h) for h in ("127.0.0.1:8080", "LOCALHOST:8080", "[::1]:8080", "127.0.0.1",
                                            "127.0.0.1:8081", "evil.example:8080", "")] == [
        True, True, True, False, False, False, False]
    public = default_allowed_hosts("https://fleet.example.com")
    assert {"fleet.example.com", "fleet.example.com:443"} <= public
    configured = AuthPolicy(TokenVerifier(None), default_allowed_hosts(  # type: ignore[arg-type]  # no NATS (as above)
        "http://0.0.0.0:8080", "fleet.example.com, 10.0.0.5:8080"))
    assert [configured.host_allowed(h) for h in ("fleet.example.com:8080", "10.0.0.5:8080", "10.0.0.5:9",
                                                 "0.0.0.0:8080")] == [True, True, False, False]


def test_protected_operations_document_401_and_403() -> None:
    schema = {"paths": {"/a": {"get": {"security": [{"bearer": []}], "responses": {"200": {}}}},
                        "/b": {"get": {"responses": {"200": {}}}}}}
    out = document_refusals(schema)
    assert set(out["paths"]["/a"]["get"]["responses"]) == {"200", "401", "403"}
    assert set(out["paths"]["/b"]["get"]["responses"]) == {"200"}
