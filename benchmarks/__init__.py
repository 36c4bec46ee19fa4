"""Benchmarks: programs, not tests (benchmarks/README.md). Every one is run as
`python -m benchmarks.NAME`, which imports this package first: the entry point that installs the
3.12 `asyncio.wait_for` (shared.aio) for all of them."""

from shared import aio

aio.install()
