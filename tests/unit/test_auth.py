"""The pure parts of NATS identities: JWTs we sign verify with the issuer's key and carry the
claims the server reads, credentials files round-trip, and the actor comes from the server's
stamp or a forwarder's hand-over, never from anything else."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from shared.auth import jwt
from shared.auth.actor import INTERNAL, ON_BEHALF_OF, REQUEST_INFO, actor_of
from shared.auth.authority import DUTY_FILES, Authority
from shared.auth.roles import ROLES, SERVICES
from shared.errors import Invalid


def _part(token: str, index: int) -> dict[str, Any]:
    raw = token.split(".")[index]
    part: dict[str, Any] = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    return part


def test_a_signed_jwt_verifies_with_the_issuer_key_and_names_its_type() -> None:
    account = jwt.new_key(jwt.PREFIX_ACCOUNT)
    user = jwt.new_key(jwt.PREFIX_USER)
    token = jwt.encode(jwt.Claims(sub=jwt.public(user), name="alice", nats=jwt.UserNats(tags=["x"])), account)
    head, body, sig = token.split(".")
    assert _part(token, 0) == {"typ": "JWT", "alg": "ed25519-nkey"}
    claims = _part(token, 1)
    assert (claims["iss"], claims["sub"], claims["name"]) == (jwt.public(account), jwt.public(user), "alice")
    assert (claims["nats"]["type"], claims["nats"]["version"]) == ("user", 2)  # the server needs both
    assert account.verify(f"{head}.{body}".encode(), base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    assert jwt.read_claims(token).name == "alice"


def test_exports_and_imports_keep_their_type_on_the_wire() -> None:
    export = json.loads(json.dumps(jwt.to_builtins(jwt.Export(name="c", subject="fleet.cmd.>"))))
    assert export["type"] == "service"  # the server refuses an account whose export has no type
    imp = jwt.to_builtins(jwt.Import(name="c", subject="fleet.cmd.>", account="A", share=True))
    assert (imp["type"], imp["share"]) == ("service", True)


def test_creds_round_trip(tmp_path: Path) -> None:
    authority = Authority.load_or_create(tmp_path / "secrets")
    text = authority.issue("operator", "alice")
    assert jwt.read_claims(jwt_token := jwt.jwt_of_creds(text)).name == "alice"
    assert _part(jwt_token, 1)["nats"]["tags"] == ["fleet-role:operator"]
    assert "-----BEGIN USER NKEY SEED-----\nSU" in text
    path = authority.write_creds(tmp_path / "out" / "a.creds", text)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700


def test_device_keys_are_derived_from_the_id_and_carry_no_permissions(tmp_path: Path) -> None:
    authority = Authority.load_or_create(tmp_path / "secrets")
    again = Authority.load_or_create(tmp_path / "secrets")
    assert jwt.public(authority.device_key("d-1")) == jwt.public(again.device_key("d-1"))
    assert jwt.public(authority.device_key("d-1")) != jwt.public(authority.device_key("d-2"))
    claims = _part(jwt.jwt_of_creds(authority.issue_device("d-1")), 1)
    assert claims["name"] == "d-1"
    assert claims["nats"]["issuer_account"] == authority.account_key("FLEET")
    # a scoped signing key's users must carry no permissions or limits: the template decides
    assert claims["nats"]["pub"] is None and claims["nats"]["subs"] == 0 and claims["nats"]["payload"] == 0
    with pytest.raises(Invalid):
        authority.issue_device("not a valid id")


def test_revocations_land_in_the_fleet_account_and_can_be_pruned(tmp_path: Path) -> None:
    authority = Authority.load_or_create(tmp_path / "secrets")
    account = authority.revoke_device("d-9", at=1000)
    assert _part(account, 1)["nats"]["revocations"] == {jwt.public(authority.device_key("d-9")): 1000}
    assert Authority.load_or_create(tmp_path / "secrets").state.revocations  # kept on disk
    assert authority.prune_revocations(max_user_lifetime=60) == 1
    assert _part(authority.account_jwt("FLEET"), 1)["nats"]["revocations"] is None


def test_every_service_has_a_role_and_unknown_roles_are_refused(tmp_path: Path) -> None:
    assert {f"service:{name}" for name in SERVICES} <= set(ROLES)
    authority = Authority.load_or_create(tmp_path / "secrets")
    assert _part(jwt.jwt_of_creds(authority.issue("service", "registry")), 1)["nats"]["tags"] == [
        "fleet-role:service:registry"]
    with pytest.raises(Invalid):
        authority.issue("root", "x")


def _stamp(name: str, tags: list[str]) -> str:
    return json.dumps({"acc": "AOPS", "user": "UKEY", "name_tag": name, "tags": tags})


@pytest.mark.parametrize(("headers", "actor"), [
    ({REQUEST_INFO: _stamp("alice", ["fleet-role:operator"])}, "operator:alice"),
    # the server's stamp wins over any hand-over the requester adds
    ({REQUEST_INFO: _stamp("alice", ["fleet-role:operator"]), ON_BEHALF_OF: "operator:bob"}, "operator:alice"),
    ({REQUEST_INFO: _stamp("registry", ["fleet-role:service:registry"])}, "service:registry"),
    ({REQUEST_INFO: _stamp("x y", ["fleet-role:operator"])}, INTERNAL),  # not a principal
    ({REQUEST_INFO: "not json"}, INTERNAL),
    ({ON_BEHALF_OF: "operator:bob"}, "operator:bob"),  # in-account: only forwarders can send
    ({ON_BEHALF_OF: "operator:bob\nx"}, INTERNAL),
    ({ON_BEHALF_OF: "nobody"}, INTERNAL),
    ({}, INTERNAL),
])
def test_the_actor_comes_from_the_stamp_or_a_forwarders_hand_over(headers: dict[str, str], actor: str) -> None:
    assert actor_of(headers) == actor


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` the rest."""
    want, have = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(want) == len(have)


def test_each_part_may_write_only_the_lease_keys_it_takes() -> None:
    """The role table names every lease a part takes (its constant in the part), and no other
    part's: a stolen identity cannot squat another part's lease."""
    from projections.main import all_projections
    from services.drift.main import lease_name
    from services.registry.main import CHECKPOINT_LEASE
    from services.rollout.main import TICKS_LEASE

    taken = {"registry": [CHECKPOINT_LEASE], "rollout": [TICKS_LEASE], "audit": ["audit"],
             "drift": [lease_name(None), lease_name((0, 3)), lease_name((2, 3))],
             "projections": [f"projection-{p.name}" for p in all_projections()]}
    for owner in SERVICES:
        pub = ROLES[f"service:{owner}"].permissions.pub
        assert pub is not None and pub.allow is not None
        for part, keys in taken.items():
            for key in keys:
                may = any(_matches(p, f"$KV.fleet_leases.{key}") for p in pub.allow)
                assert may == (part == owner), (owner, key)


def test_a_revocation_survives_a_stale_copy_of_the_authority(tmp_path: Path) -> None:
    """`fleet creds revoke-device X` (one process) then a retirement handled by `fleet up`'s copy,
    loaded before: X stays revoked in the account JWT pushed and on disk, and so do both after a
    restart; enrolment and renewal see revocations made elsewhere."""
    up = Authority.load_or_create(tmp_path / "secrets")
    cli = Authority.load_or_create(tmp_path / "secrets")
    up.issue_device("x")  # the copy has read the state before the revocation
    cli.revoke_device("x")
    assert up.device_revoked("x")
    account = _part(up.revoke_device("y"), 1)
    revoked = set(account["nats"]["revocations"])
    assert {jwt.public(up.device_key("x")), jwt.public(up.device_key("y"))} <= revoked
    up.handled(10)
    restarted = Authority.load_or_create(tmp_path / "secrets")
    assert restarted.device_revoked("x") and restarted.device_revoked("y")
    assert restarted.state.handled_seq == 10


def test_re_enrolling_a_revoked_device_gives_it_a_new_key(tmp_path: Path) -> None:
    authority = Authority.load_or_create(tmp_path / "secrets")
    first = jwt.read_claims(jwt.jwt_of_creds(authority.issue_device("d1"))).sub
    assert jwt.read_claims(jwt.jwt_of_creds(authority.issue_device("d1"))).sub == first  # no revocation: same
    authority.revoke_device("d1")
    second = jwt.read_claims(jwt.jwt_of_creds(authority.issue_device("d1"))).sub
    assert second != first and not authority.device_revoked("d1")
    authority.revoke_device("d1")
    third = jwt.read_claims(jwt.jwt_of_creds(authority.issue_device("d1"))).sub
    assert third not in (first, second)


def test_copies_of_the_state_merge_without_losing_a_revocation_or_a_rotation(tmp_path: Path) -> None:
    """The authority part's shared copy read over a local one changed apart (a CLI enrolment that
    rotated a key, a revocation): both survive; a prune is not undone by an older copy."""
    local = Authority.load_or_create(tmp_path / "secrets")
    local.revoke_device("rotated")
    shared_copy = local.encoded_state()  # what the part wrote to NATS then
    local.issue_device("rotated")  # re-enrolled beside the part: generation 1
    local.revoke_device("other")
    local.adopt_state(shared_copy)  # the part's copy arrives
    assert local.state.generations == {"rotated": 1} and local.device_revoked("other")
    import time

    local.revoke_key("UOLD", at=int(time.time()) - 1000)  # an old revocation: its JWTs have expired
    old_copy = local.encoded_state()
    assert local.prune_revocations(500) == 1
    local.adopt_state(old_copy)  # a copy from before the prune does not bring it back
    assert "UOLD" not in local.state.revocations and local.device_revoked("other")


def test_the_operator_signing_key_rotates_in_two_steps(tmp_path: Path) -> None:
    authority = Authority.load_or_create(tmp_path)
    old = authority.publics["operator-signing"]

    def trusted() -> list[str]:
        claims = json.loads(base64.urlsafe_b64decode(_pad(authority.operator_jwt().split(".")[1])))
        return list(claims["nats"]["signing_keys"])

    assert trusted() == [old]
    new = authority.rotate_signing_key()
    assert new != old and trusted() == [new, old]  # both trusted while the parts move to the new one
    account = json.loads(base64.urlsafe_b64decode(_pad(authority.account_jwt("FLEET").split(".")[1])))
    assert account["iss"] == new
    assert Authority.load_for_duties(tmp_path).publics["operator-signing"] == new
    authority.rotate_signing_key(finish=True)
    assert trusted() == [new]


def test_the_authority_part_runs_on_its_duty_keys_alone(tmp_path: Path) -> None:
    full = Authority.load_or_create(tmp_path / "full")
    duties = tmp_path / "duties"
    duties.mkdir(mode=0o700)
    for name in DUTY_FILES:
        (duties / name).write_bytes((tmp_path / "full" / name).read_bytes())
    part = Authority.load_for_duties(duties)
    assert set(part.keys) == {"operator-signing", "devices"}
    creds = part.issue_device("d1", expires_in=60)
    device = json.loads(base64.urlsafe_b64decode(_pad(jwt.jwt_of_creds(creds).split(".")[1])))
    assert device["iss"] == full.publics["devices"]  # signed by FLEET's scoped device key
    part.revoke_device("d1")
    claims = json.loads(base64.urlsafe_b64decode(_pad(part.account_jwt("FLEET").split(".")[1])))
    assert claims["sub"] == full.account_key("FLEET") and claims["nats"]["revocations"]
    (duties / "devices.nk").unlink()
    with pytest.raises(Invalid, match=r"devices\.nk"):
        Authority.load_for_duties(duties)


def _pad(body: str) -> str:
    return body + "=" * (-len(body) % 4)
