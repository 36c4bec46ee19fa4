"""The log's proof of integrity (DESIGN §8, docs/audit.md): the hash chain and signed checkpoints
(`chain`), the verifier (`verify`), where messages to verify come from (`source`) and the signing
key on disk (`keys`)."""
