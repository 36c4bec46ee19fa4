"""An independent check of a Fleetplane audit export, written from docs/audit.md alone: plain
Python, hashlib and PyNaCl; it imports nothing of Fleetplane.

    python audit_verify_independent.py EXPORT.jsonl [--key BASE64_PUBLIC_KEY]

Prints `intact SEQ:HEAD CHECKPOINTS` and exits 0, or prints what is wrong and exits 1. It checks
the chain and every checkpoint signature; it does not try to name the bad sequence."""

from __future__ import annotations

import base64
import hashlib
import json
import sys

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey


def main(argv: list[str]) -> int:
    path = argv[1]
    pinned = argv[argv.index("--key") + 1] if "--key" in argv else None
    messages = []
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                item = json.loads(line)
                body = item["body"].encode("utf-8") if "body" in item else base64.b64decode(item["body_b64"])
                messages.append((item["seq"], item["subject"], body))
    if messages and messages[0][0] != 1:
        print("this checker only verifies exports that start at seq 1")
        return 1

    # Keys: the pinned one, else the first announced; later ones only if endorsed by a trusted one.
    keys: dict[str, bytes] = {}
    if pinned:
        raw = base64.b64decode(pinned)
        keys[hashlib.sha256(raw).hexdigest()[:16]] = raw
    checkpoints = {}  # through_seq -> (seq, data)
    for seq, subject, body in messages:
        if not subject.startswith("fleet.evt.audit."):
            continue
        try:
            envelope = json.loads(body)
        except ValueError:
            continue
        data = envelope.get("data", {})
        if envelope.get("type") == "AuditKeyAnnounced":
            raw = base64.b64decode(data["public_key"])
            kid = hashlib.sha256(raw).hexdigest()[:16]
            if kid != data["key_id"] or kid in keys:
                continue
            endorser = keys.get(data.get("endorsed_by") or "")
            if not keys:
                keys[kid] = raw
            elif endorser is not None:
                try:
                    VerifyKey(endorser).verify(b"fleetplane-audit-key-v1\x00" + raw,
                                               base64.b64decode(data["endorsement"]))
                    keys[kid] = raw
                except BadSignatureError:
                    pass
        elif envelope.get("type") == "AuditCheckpointed":
            checkpoints[data["through_seq"]] = (seq, data)

    chain = bytes(32)
    verified = 0
    seen = set()
    for seq, subject, body in messages:
        chain = hashlib.sha256(chain + seq.to_bytes(8, "big") + subject.encode("utf-8") + b"\x00" + body).digest()
        seen.add(seq)
        if seq not in checkpoints:
            continue
        at, cp = checkpoints[seq]
        if cp["key_id"] not in keys:
            print(f"checkpoint at seq {at}: key {cp['key_id']} is not trusted")
            return 1
        signed = (b"fleetplane-audit-checkpoint-v1\x00" + cp["number"].to_bytes(8, "big")
                  + cp["from_seq"].to_bytes(8, "big") + cp["through_seq"].to_bytes(8, "big")
                  + bytes.fromhex(cp["chain"]) + hashlib.sha256(base64.b64decode(cp["digests"])).digest())
        try:
            VerifyKey(keys[cp["key_id"]]).verify(signed, base64.b64decode(cp["signature"]))
        except BadSignatureError:
            print(f"checkpoint at seq {at}: bad signature")
            return 1
        if chain.hex() != cp["chain"]:
            print(f"the chain at seq {seq} differs from checkpoint {cp['number']} (at seq {at})")
            return 1
        verified += 1
    last = messages[-1][0] if messages else 0
    missing = sorted(t for t in checkpoints if t not in seen and t <= last)
    if missing or len(seen) != len(messages) or sorted(seen) != [seq for seq, _, _ in messages]:
        print(f"sequences are missing or out of order (first checkpoint not reached: {missing[:1]})")
        return 1
    print(f"intact {last}:{chain.hex()} {verified}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
