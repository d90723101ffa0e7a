"""Prometheus metrics, one registry per app. Each metric is recorded by the layer that knows:
requests in the API middleware, queue/batch/step/latency in the scheduler, sessions in the store."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as _multiprocess

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_STEP = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "rnnserve_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "rnnserve_request_seconds",
            "HTTP request latency (to the end of the body)",
            ["route", "method"],
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "rnnserve_time_to_first_token_seconds",
            "Generation: submit to first token",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.itl = Histogram(
            "rnnserve_inter_token_seconds",
            "Generation: time between tokens of a stream",
            ["model"],
            buckets=_STEP,
            registry=r,
        )
        # gauges say how processes combine under `--workers` (multiprocess mode; ignored in one
        # process): engine figures are the engine's own, the live count the latest read
        self.queue_depth = Gauge(
            "rnnserve_queue_depth",
            "Prefill/predict jobs waiting",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.active_streams = Gauge(
            "rnnserve_active_streams",
            "Generation streams in the decode batch",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "rnnserve_batch_size",
            "Rows per engine call",
            ["model", "kind"],
            buckets=_BATCH,
            registry=r,
        )
        self.step_time = Histogram(
            "rnnserve_engine_step_seconds",
            "Wall time of one engine call (runner + batching)",
            ["model", "kind"],
            buckets=_STEP,
            registry=r,
        )
        self.tokens = Counter(
            "rnnserve_generated_tokens", "Tokens generated", ["model"], registry=r
        )
        self.live_sessions = Gauge(
            "rnnserve_live_sessions", "Live sessions", registry=r, multiprocess_mode="mostrecent"
        )
        self.session_evictions = Counter(
            "rnnserve_session_evictions",
            "Sessions removed before their client deleted them",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "rnnserve_model_info",
            "Loaded models (value 1)",
            ["model", "version", "task", "cell", "sha256", "provider", "variant"],
            registry=r,
            multiprocess_mode="max",
        )
        self.model_load_failures = Gauge(
            "rnnserve_model_load_failures",
            "Artifacts refused at start-up",
            registry=r,
            multiprocess_mode="max",
        )
        # each request's labelled children, looked up once: `labels()` takes a lock and builds
        # a key on every call (routes are templates and statuses few, so this stays small)
        self._request_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def request_done(self, route: str, method: str, status: str, seconds: float) -> None:
        """One HTTP request answered: count it and observe its latency."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(route, method, status),
                self.request_latency.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)


def exposition(own: CollectorRegistry) -> bytes:
    """The text a scrape gets: this process's registry, or under `--workers` (prometheus-client's
    multiprocess folder set) the sum over every worker and the engine."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        _multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
    return generate_latest(own)
