"""Every Prometheus metric of the service, in one place.

Labels are bounded: route templates (never raw paths, the DN token is in one), outcomes and
status codes from small fixed sets.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram

M = TypeVar("M", Counter, Gauge, Histogram)


@lru_cache(maxsize=4096)
def labelled(metric: M, *values: str) -> M:
    """`metric.labels(*values)`, looked up once per process: `labels()` validates and locks on
    every call (~1% of a send's CPU on the hot paths)."""
    return metric.labels(*values)


HTTP_REQUESTS = Counter(
    "relay_http_requests_total",
    "HTTP requests by route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "relay_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SENDS = Counter(
    "relay_messages_total",
    "Messages (recipients) by send outcome: pending, rejected, unknown, insufficient_credit, ...",
    ["outcome"],
)
UPSTREAM_REQUESTS = Counter(
    "relay_upstream_requests_total",
    "Requests to Bulk360 by endpoint and result (HTTP status, or timeout/connection_error)",
    ["endpoint", "result"],
)
UPSTREAM_LATENCY = Histogram(
    "relay_upstream_request_duration_seconds",
    "Latency of requests to Bulk360",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TOKEN_REFRESHES = Counter(
    "relay_upstream_token_refreshes_total", "OAuth2 token requests by result", ["result"]
)
DN_RECEIVED = Counter(
    "relay_dn_total",
    "Delivery notifications by outcome: stored, rejected (4xx), unavailable (503)",
    ["outcome"],
)
DN_QUEUE_DEPTH = Gauge("relay_dn_writer_queue_depth", "DNs waiting for the writer's next batch")
DN_BATCH_SIZE = Histogram(
    "relay_dn_writer_batch_size",
    "DNs committed per writer transaction",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)
DN_BATCH_SECONDS = Histogram(
    "relay_dn_writer_batch_duration_seconds",
    "Time from a writer batch's start (connection checkout) to its COMMIT",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SEND_BATCH_SIZE = Histogram(
    "relay_send_batch_size",
    "Sends per group-committed statement: rows (before the provider) or answers (after it)",
    ["kind"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
SEND_ANSWERS_UNRECORDED = Gauge(
    "relay_send_answers_unrecorded",
    "Provider answers kept in memory until the database takes them (its outage outlasted the send)",
    multiprocess_mode="livesum",
)
BULK360_BALANCE = Gauge(
    "relay_bulk360_balance",
    "The account balance Bulk360 reported last (before the request that reported it)",
    ["currency"],
    multiprocess_mode="mostrecent",  # with several workers: whichever saw it last
)
UPSTREAM_TOKEN_STATE = Gauge(
    "relay_upstream_token_state",
    "1 for the current state of the cached OAuth2 token (none, valid, expired, failing)",
    ["state"],
    multiprocess_mode="livemax",  # with several workers: 1 if any live worker is in that state
)
SWEEP_ROWS = Counter(
    "relay_sweep_rows_total",
    "Rows changed by the periodic sweeps: expired messages, pruned rows, purged keys",
    ["kind"],
)
SWEEP_SECONDS = Histogram(
    "relay_sweep_duration_seconds",
    "Time of each sweep (expiry, retention, idempotency_keys, stats) and of one expiry batch",
    ["kind"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CALLBACK_EVENTS = Counter(
    "relay_callback_events_total",
    "Callback events by the state an attempt or a claim left them in: delivered, retry, "
    "failed, gone, superseded",
    ["state"],
)
CALLBACK_ATTEMPTS = Counter(
    "relay_callback_attempts_total",
    "Callback attempts by outcome: 2xx, 3xx, 4xx, 410, 429, 5xx, timeout, connection_error",
    ["outcome"],
)
CALLBACK_LATENCY = Histogram(
    "relay_callback_delivery_seconds",
    "From the change's recording (its transaction) to the receiver's 2xx",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
CALLBACK_QUEUE_DEPTH = Gauge(
    "relay_callback_pending",
    "Callback events pending (due or waiting for a retry), database-wide",
    multiprocess_mode="livemax",  # every process reads the same database figure
)
CALLBACK_OLDEST_PENDING = Gauge(
    "relay_callback_oldest_pending_seconds",
    "Age of the oldest pending callback event, database-wide (0 when none)",
    multiprocess_mode="livemax",
)
