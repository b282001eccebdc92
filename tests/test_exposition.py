"""The fast /metrics path writes exactly prometheus_client's bytes, and its gzip is valid.

A real daemon (in-process) backs up a small simulated fleet: a success with warnings, a failure,
a run in progress, a label value needing escapes. Its exposition, rendered by the cached fast
path, must equal prometheus_client's own encoder output for every Accept header Prometheus and
people send, before and after the fleet changed (the caches must not serve stale lines), and the
incrementally built gzip must decompress (CRC checked) to the same bytes.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.exposition import choose_encoder

from akeeba_backupd.config import load_config
from akeeba_backupd.exposition import GzipExposition, crc32_combine, render_exposition
from akeeba_backupd.service import Service
from akeeba_backupd.simulator import Faults, Simulator, SiteSpec

ACCEPTS = (
    "",
    "text/plain;version=0.0.4",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;"
    "escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "application/openmetrics-text",
)
SECRET = "exposition-test-secret-0123456789"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    simulator = Simulator(
        [
            SiteSpec(name="good", secret=SECRET, steps=4, warnings=((2, "w"),)),
            SiteSpec(name="bad", secret=SECRET, steps=4, faults=Faults(engine_error_at_step=2)),
            SiteSpec(name="slow", secret=SECRET, steps=200, step_seconds=0.05),
        ]
    )
    await simulator.start()
    document = {
        "listen": "127.0.0.1:0",
        "state_dir": str(tmp_path),
        "defaults": {"retry_backoff": "0s", "request_timeout": "5s"},
        "sites": [
            {
                "name": name,
                "url": simulator.base_url(name),
                "platform": "joomla",
                "secret_env": "CHECK_SECRET",
                "labels": {"customer": 'a "quoted" \\ one\nline'},
                "schedules": [
                    {"name": "nightly", "cron": "0 3 * * *"},
                    {"name": "db", "cron": "H * * * *"},
                ],
            }
            for name in ("good", "bad", "slow")
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(document), encoding="utf-8")
    environ = {"CHECK_SECRET": SECRET}
    daemon = Service(load_config(path, environ), environ=environ, handle_signals=False)
    task = asyncio.create_task(daemon.serve())
    await asyncio.wait_for(daemon.ready.wait(), 10)
    try:
        yield daemon
    finally:
        daemon.request_stop()
        await task
        await simulator.stop()


def assert_same_as_prometheus_client(service: Service, gzipper: GzipExposition) -> None:
    for accept in ACCEPTS:
        encoder, content_type = choose_encoder(accept)
        expected = encoder(service.registry)
        exposition = render_exposition(service.registry, accept)
        assert exposition is not None
        assert exposition.content_type == content_type
        assert exposition.body() == expected, accept
        job = gzipper.prepare(exposition)
        assert gzip.decompress(job.run()) == expected, accept  # checks the CRC and length
        gzipper.remember(job)


async def test_the_fast_path_writes_prometheus_client_bytes_as_the_fleet_changes(
    service: Service,
) -> None:
    gzippers = {accept: GzipExposition() for accept in ("text", "openmetrics")}
    assert_same_as_prometheus_client(service, gzippers["text"])  # nothing ran yet
    for site in ("good", "bad", "slow"):
        service.trigger(site, "nightly")
    for _ in range(6):  # good succeeds, bad fails, slow keeps stepping: lines change each time
        await asyncio.sleep(0.3)
        assert_same_as_prometheus_client(service, gzippers["text"])
    service.pause("good", None)
    assert_same_as_prometheus_client(service, gzippers["openmetrics"])


def test_a_repeated_scrape_reuses_the_compressed_families(service: Service) -> None:
    """Unchanged families are not compressed again, and the reused member is still valid."""
    gzipper = GzipExposition()
    accept = "application/openmetrics-text;version=1.0.0"
    exposition = render_exposition(service.registry, accept)
    assert exposition is not None
    first = gzipper.prepare(exposition)
    first.run()
    gzipper.remember(first)
    again = render_exposition(service.registry, accept)
    assert again is not None
    job = gzipper.prepare(again)
    reused = sum(1 for piece in job.pieces if not isinstance(piece, bytes))
    assert reused >= 20, "the per-schedule families should be reused"
    assert gzip.decompress(job.run()) == again.body()


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc32_combine_matches_zlib(first: bytes, second: bytes) -> None:
    assert crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second)) == zlib.crc32(
        first + second
    )


def test_crc32_combine_handles_long_blocks() -> None:
    block = bytes(range(256)) * 40_000  # 10 MB: exercises the high powers of two
    assert crc32_combine(zlib.crc32(b"head"), zlib.crc32(block), len(block)) == zlib.crc32(
        b"head" + block
    )
