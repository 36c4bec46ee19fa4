"""Every file `fleet contract export` writes under docs/contract/: the JSON Schemas and the AsyncAPI
document (shared.contract.schema) and the Markdown reference (shared.contract.reference)."""

from __future__ import annotations

from shared.contract import reference, schema


def files() -> dict[str, bytes]:
    """Relative path -> the bytes of that file."""
    out = {path: schema.render(value) for path, value in schema.export().items()}
    out["reference.md"] = reference.render().encode()
    return dict(sorted(out.items()))
