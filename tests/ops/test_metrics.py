"""`/metrics` in Prometheus format, counters moving with real traffic; `X-Request-ID`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from app.bulk360.simulator import Simulator
from tests.conftest import Relay


async def scrape(relay: Relay) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await relay.client.get("/metrics", headers={"Authorization": ""})
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_is_prometheus_text(relay: Relay) -> None:
    response = await relay.client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE relay_http_requests_total counter" in response.text


async def test_metrics_speaks_openmetrics_when_asked(relay: Relay) -> None:
    response = await relay.client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )

    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


async def test_counters_move_after_a_send_and_a_dn(relay: Relay, simulator: Simulator) -> None:
    before = await scrape(relay)

    sent = await relay.client.post("/v1/messages", json={"to": "60123240066", "text": "hi"})
    assert sent.status_code == 201, sent.text
    ref = sent.json()["messages"][0]["ref"]
    dn = await relay.client.get(
        relay.dn_path(), params={"msgid": ref, "status": "DELIVERED", "error-code": "000"}
    )
    assert dn.status_code == 200, dn.text
    rejected = await relay.client.get(relay.dn_path(), params={"status": "DELIVERED"})
    assert rejected.status_code == 400
    after = await scrape(relay)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("relay_messages_total", outcome="pending") == 1
    assert moved("relay_dn_total", outcome="stored") == 1
    assert moved("relay_dn_total", outcome="rejected") == 1
    assert moved("relay_upstream_token_refreshes_total", result="ok") >= 1
    upstream = sum(
        v - value(before, name, **dict(labels))
        for (name, labels), v in after.items()
        if name == "relay_upstream_requests_total"
    )
    assert upstream >= 2  # the token request and the send
    assert (
        moved("relay_http_requests_total", method="POST", route="/v1/messages", status="201") == 1
    )
    # The DN hook is counted by its route template: the token never becomes a label.
    assert moved("relay_http_requests_total", method="GET", route="/dn/{token}", status="200") == 1
    assert (
        moved("relay_http_request_duration_seconds_count", method="POST", route="/v1/messages") == 1
    )
    assert value(after, "relay_upstream_token_state", state="valid") == 1
    assert value(after, "relay_upstream_token_state", state="none") == 0
    assert value(after, "relay_dn_writer_queue_depth") == 0
    # One batch committed for the one stored DN (the simulator's own DN may add another).
    batches = moved("relay_dn_writer_batch_duration_seconds_count")
    assert batches >= 1 and batches == moved("relay_dn_writer_batch_size_count")
    scraped = (await relay.client.get("/metrics")).text
    assert relay.settings.effective_dn_hook_token not in scraped


async def test_request_id_is_echoed_or_generated(relay: Relay) -> None:
    given = await relay.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    made = await relay.client.get("/healthz")
    unsafe = await relay.client.get("/healthz", headers={"X-Request-ID": "a b\tc"})
    on_error = await relay.client.get("/v1/messages/NOPE", headers={"X-Request-ID": "err-1"})

    assert given.headers["x-request-id"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert unsafe.headers["x-request-id"] != "a b\tc"
    assert on_error.status_code == 404 and on_error.headers["x-request-id"] == "err-1"


def test_metrics_merge_workers_in_multiprocess_mode(tmp_path: Path, db_url: str) -> None:
    # prometheus_client picks its mode at import: run in a fresh interpreter.
    script = """
import asyncio, httpx
from app.ops.metrics import SENDS
SENDS.labels("pending").inc(3)
from tests.conftest import relay_settings
from app.main import create_app
from asgi_lifespan import LifespanManager

async def main():
    app = create_app(relay_settings("{db}", "http://127.0.0.1:9"))
    async with LifespanManager(app) as m:
        transport = httpx.ASGITransport(m.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            print((await c.get("/metrics")).text)
asyncio.run(main())
"""
    # A second "worker" wrote its own file in the same directory.
    other = """
from app.ops.metrics import SENDS
SENDS.labels("pending").inc(4)
"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", other], env=env, check=True, cwd=Path.cwd())
    out = subprocess.run(
        [sys.executable, "-c", script.replace("{db}", db_url)],
        env=env,
        check=True,
        cwd=Path.cwd(),
        capture_output=True,
        text=True,
    ).stdout

    assert 'relay_messages_total{outcome="pending"} 7.0' in out
