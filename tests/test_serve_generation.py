"""Batched generation in charformer.serve over real HTTP on loopback: concurrent requests share decoding steps
(/metrics counts steps of more than one sequence) and each gets exactly the text it gets alone; a streaming
client that goes away leaves the batch; batching off steps one sequence at a time."""

import json
import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

import pretrain
from charformer.serve.app import BatchConfig, Service, build_app
from charformer.serve.limits import Limits
from charformer.serve.models import load_served
from tests.serve_helpers import TINY, WORDS, ThreadServer, post_together, request


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_lm")
    rng = random.Random(0)
    (root / "corpus.txt").write_text("".join("".join(rng.choice(WORDS) for _ in range(8)) + "\n" for _ in range(200)),
                                     encoding="utf-8")
    pretrain.main(["--data", str(root / "corpus.txt"), "--out", str(root / "clm"), "--max-steps", "5", *TINY])
    return root / "clm"


def _server(ckpt, batch: BatchConfig) -> ThreadServer:
    base, adapters = load_served(ckpt, {}, device="cpu")
    server = ThreadServer(build_app(Service(base, adapters, limits=Limits(), token=None, batch=batch)))
    server.wait_ready()
    return server


def _batch_sizes(port) -> dict:
    """{"count", "sum", "single"} of the batch size histogram of the base model (single: steps of 1)."""
    text = request(port, "GET", "/metrics")[2]
    samples = {(s.name, s.labels.get("le")): s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.labels.get("model") == "base"}
    return {"count": samples.get(("charformer_batch_size_count", None), 0.0),
            "sum": samples.get(("charformer_batch_size_sum", None), 0.0),
            "single": samples.get(("charformer_batch_size_bucket", "1.0"), 0.0)}


BODIES = [{"prompt": "中国人民" * (i % 3) + WORDS[i], "max_new_chars": 40 + i, "seed": i,
           "temperature": 0.0 if i % 3 == 0 else 1.0, **({"top_k": 4} if i % 2 else {"top_p": 0.9})}
          for i in range(8)]


def test_concurrent_generations_share_steps_and_each_gets_its_own_text(lm):
    server = _server(lm, BatchConfig())
    try:
        alone = [request(server.port, "POST", "/v1/generate", body)[2]["text"] for body in BODIES]
        assert len(set(alone)) == len(BODIES) and all(alone)
        before = _batch_sizes(server.port)
        assert before["count"] == before["single"]  # one request at a time: every step held one sequence
        answers = post_together(server.port, "/v1/generate", BODIES)
        assert [(status, out["text"]) for status, _, out in answers] == [(200, text) for text in alone]
        after = _batch_sizes(server.port)
        steps, shared = after["count"] - before["count"], after["count"] - after["single"]
        # every character came from a step; a step may also draw a special token (end-of-text), which is no text
        assert after["sum"] - before["sum"] >= sum(len(text) for text in alone)
        assert shared > 0 and steps < sum(len(text) for text in alone)  # steps ran several sequences at once
    finally:
        server.stop()


def test_a_streaming_client_that_leaves_is_dropped_and_batching_off_runs_one_at_a_time(lm):
    server = _server(lm, BatchConfig(batching=False))
    try:
        body = json.dumps({"prompt": "中国", "max_new_chars": 2000, "temperature": 1.0, "seed": 1,
                           "stream": True}).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            received = b""
            while b"data: " not in received:  # the stream has started
                received += s.recv(4096)
        deadline = time.monotonic() + 10
        while _in_flight(server.port) and time.monotonic() < deadline:
            time.sleep(0.02)
        stepped = _batch_sizes(server.port)["sum"]
        time.sleep(0.3)
        assert _batch_sizes(server.port)["sum"] <= stepped + 1  # its sequence left the batch
        assert stepped < 2000

        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda b: request(server.port, "POST", "/v1/generate", b), BODIES[:3]))
        assert all(status == 200 and out["text"] for status, _, out in answers)
        sizes = _batch_sizes(server.port)
        assert sizes["count"] == sizes["single"]  # batching off: one sequence per step
    finally:
        server.stop()


def _in_flight(port) -> float:
    text = request(port, "GET", "/metrics")[2]
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "charformer_in_flight")
