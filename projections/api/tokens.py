"""`GET /v1/tokens` (admin): the issued API tokens, without their hashes. Tokens are issued and
revoked with `fleet token create|revoke`, which write the `fleet_tokens` bucket directly."""

from __future__ import annotations

import msgspec
from litestar import get
from litestar.di import NamedDependency

from projections.api.auth import ADMIN
from projections.api.queries import ReadModels
from shared.tokens import list_records


class TokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One issued token (its secret is never stored, its hash never shown)."""

    id: str
    name: str
    role: str
    created_at: str
    created_by: str


class TokenList(msgspec.Struct, frozen=True, kw_only=True):
    """Every live token."""

    items: list[TokenInfo]


@get("/v1/tokens", tags=["operations"], opt={"access": ADMIN})
async def tokens(models: NamedDependency[ReadModels]) -> TokenList:
    """The live API tokens (admin only)."""
    records = await list_records(models.log.nc)
    return TokenList(items=[TokenInfo(id=r.id, name=r.name, role=r.role, created_at=r.created_at,
                                      created_by=r.created_by) for r in records])


ROUTES = [tokens]
