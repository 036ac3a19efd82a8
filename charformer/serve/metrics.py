"""The server's Prometheus metrics (`prometheus_client`), served as text at ``GET /metrics``.

Each server has its own registry (several can live in one process, as in the tests). Labels take only values
from fixed sets (the endpoint paths, HTTP statuses, refusal reasons, model names given at start-up), never
anything a client chose, so a client cannot grow the number of series:

    charformer_requests_total{endpoint, status}        requests answered
    charformer_errors_total{endpoint, reason}          requests refused or failed (reason: unauthorized,
                                                       too_large, bad_json, bad_encoding, bad_request,
                                                       not_found, overloaded, not_ready, disconnected,
                                                       internal)
    charformer_request_seconds{endpoint}               latency histogram, from the request to the last byte
    charformer_batch_size{model}                       texts per model batch (histogram); for a generating
                                                       model, sequences per decoding step
    charformer_chars_total{endpoint}                   characters of text read (texts or prompts)
    charformer_generated_chars_total                   characters generated
    charformer_queue_depth                             texts waiting for a batch, and generation requests
                                                       waiting to join one
    charformer_in_flight                               /v1 requests being answered
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The metrics above, in a registry of their own; `queue_depth` reads its value from a callable."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth: Callable[[], float]):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("charformer_requests", "Requests answered", ["endpoint", "status"], registry=r)
        self.errors = Counter("charformer_errors", "Requests refused or failed", ["endpoint", "reason"], registry=r)
        self.latency = Histogram("charformer_request_seconds", "Request latency (s)", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("charformer_batch_size",
                                    "Texts per model batch (generation: sequences per decoding step)", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.chars = Counter("charformer_chars", "Characters of text read", ["endpoint"], registry=r)
        self.generated = Counter("charformer_generated_chars", "Characters generated", registry=r)
        self.in_flight = Gauge("charformer_in_flight", "/v1 requests being answered", registry=r)
        Gauge("charformer_queue_depth", "Texts (and generation requests) waiting for a batch",
              registry=r).set_function(queue_depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)
