"""The dashboard at `/`: one static page (plain HTML and JavaScript, no build step) that polls
the query API every 1.5 s and sends rollout commands through `POST /v1/rollouts/{id}/{action}`."""

from __future__ import annotations

from pathlib import Path

from litestar import get
from litestar.enums import MediaType

_PAGE = (Path(__file__).parent / "dashboard.html").read_text()


@get("/", media_type=MediaType.HTML, include_in_schema=False, sync_to_thread=False)
def dashboard() -> str:
    """The fleet dashboard."""
    return _PAGE
