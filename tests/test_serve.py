"""charformer.serve over real HTTP on loopback: every endpoint end to end on one base and three adapters,
per-request results under concurrent batched load, the token, every limit and bad body answered with its
status and counted in /metrics, readiness, SIGTERM finishing the request in flight, start-up refusals, the
batcher on its own, and the page in a real headless browser."""

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from charformer.errors import CharformerError
from charformer.serve import __main__ as serve_main, app as serve_app
from charformer.serve.app import BatchConfig, Service, build_app
from charformer.serve.batching import Batcher
from charformer.serve.limits import Limits
from charformer.serve.models import load_served, share_identical_tensors
from tests.serve_helpers import ThreadServer, make_models, post_together, request

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("serve_models"))


def _start(ckpt, adapters=None, *, token=None, limits=Limits(), batch=BatchConfig(max_wait_ms=20),
           int8=False) -> ThreadServer:
    base, served = load_served(ckpt, adapters or {}, device="cpu", int8=int8)
    server = ThreadServer(build_app(Service(base, served, limits=limits, token=token, batch=batch)))
    server.wait_ready()
    return server


@pytest.fixture(scope="module")
def full(tiny):
    """The causal LM as base (generation) with a segmentation, an NER and a classification adapter."""
    server = _start(tiny["clm"], {"seg": tiny["cws"], "ner": tiny["ner"], "sent": tiny["classify"]})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def guarded(tiny_segmenter):
    """A segmenter behind a token with small limits; a batch waits up to 1 s to fill, so requests stay in
    flight long enough to meet the concurrency limit."""
    limits = Limits(max_body_bytes=2000, max_texts=5, max_chars=50, max_concurrent=2)
    server = _start(tiny_segmenter, token=TOKEN, limits=limits, batch=BatchConfig(max_wait_ms=1000))
    yield server
    server.stop()


def _metrics(port) -> dict:
    """{(sample name, sorted label items): value} of GET /metrics."""
    status, _, text = request(port, "GET", "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _count(metrics, name, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def _stream(port, body) -> list[tuple[str, dict]]:
    """The server-sent events of POST /v1/generate as (event name, data) pairs."""
    status, headers, text = request(port, "POST", "/v1/generate", {**body, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = []
    for block in text.strip("\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


def test_every_endpoint_end_to_end(full):
    port = full.port
    assert request(port, "GET", "/healthz")[:3:2] == (200, {"status": "alive"})
    assert request(port, "GET", "/readyz")[:3:2] == (200, {"status": "ready"})
    status, _, listing = request(port, "GET", "/v1/models")
    assert status == 200 and [(m["name"], m["endpoint"]) for m in listing["models"]] == [
        (None, "/v1/generate"), ("seg", "/v1/segment"), ("ner", "/v1/tag"), ("sent", "/v1/classify")]
    assert listing["models"][2]["types"] == ["NAME", "ORG"] and listing["models"][3]["labels"] == ["0", "1"]

    texts = ["中国人民站起来了", "", "北京 天安门😀\u3000x\u0301", "我们" * 30]  # spaces, astral, combining, > block
    status, _, out = request(port, "POST", "/v1/segment", {"texts": texts})
    assert status == 200 and len(out["words"]) == len(texts) and out["words"][1] == []
    assert ["".join(words) for words in out["words"]] == texts and all(all(out["words"][i]) for i in (0, 2, 3))

    text = "张三在北京大学工作"
    status, _, out = request(port, "POST", "/v1/tag", {"texts": [text, ""], "adapter": "ner"})
    assert status == 200 and out["entities"][1] == []
    assert out["entities"][0] and all(e["text"] == text[e["start"]:e["end"]] and e["type"] in ("NAME", "ORG")
                                      for e in out["entities"][0])

    status, _, out = request(port, "POST", "/v1/classify", {"texts": ["房间很好喜欢", "很差"]})
    assert status == 200 and len(out["results"]) == 2
    for result in out["results"]:
        assert set(result["probs"]) == {"0", "1"} and sum(result["probs"].values()) == pytest.approx(1, abs=1e-5)
        assert result["label"] == max(result["probs"], key=result["probs"].get)

    body = {"prompt": "中国", "max_new_chars": 12, "temperature": 1.0, "top_k": 5, "top_p": 0.9, "seed": 7}
    status, _, first = request(port, "POST", "/v1/generate", body)
    assert status == 200 and 0 < len(first["text"]) <= 12
    assert request(port, "POST", "/v1/generate", body)[2] == first  # a seed fixes the continuation
    events = _stream(port, body)
    assert events[-1] == ("end", first) and all(name == "message" for name, _ in events[:-1])
    assert "".join(data["text"] for _, data in events[:-1]) == first["text"]

    status, headers, page = request(port, "GET", "/")
    assert status == 200 and 'id="segment-run"' in page and "default-src 'self'" in headers["content-security-policy"]
    assert "http" not in page.replace("http-equiv", "")  # nothing loaded from elsewhere
    metrics = _metrics(port)
    for endpoint in ("segment", "tag", "classify"):
        assert _count(metrics, "charformer_requests_total", endpoint=endpoint, status="200") >= 1
    assert _count(metrics, "charformer_requests_total", endpoint="generate", status="200") == 3
    assert _count(metrics, "charformer_chars_total", endpoint="segment") >= sum(map(len, texts))
    assert _count(metrics, "charformer_generated_chars_total") == 3 * len(first["text"])


def test_concurrent_requests_are_batched_and_each_gets_its_own_words(full):
    before = _metrics(full.port)
    chars = "中国人民站起来了我们北京天安门，。张三abc 😀"
    requests = [{"texts": ["".join(chars[(i * 7 + j * 3 + k) % len(chars)] for k in range(3 + (i + j) % 20))
                           for j in range(1 + i % 4)], "adapter": "seg"} for i in range(24)]
    answers = post_together(full.port, "/v1/segment", requests)
    for body, (status, _, out) in zip(requests, answers):
        assert status == 200 and ["".join(words) for words in out["words"]] == body["texts"]
    after = _metrics(full.port)
    batches = (_count(after, "charformer_batch_size_count", model="seg")
               - _count(before, "charformer_batch_size_count", model="seg"))
    texts = (_count(after, "charformer_batch_size_sum", model="seg")
             - _count(before, "charformer_batch_size_sum", model="seg"))
    assert texts == sum(len(body["texts"]) for body in requests)
    assert 1 <= batches < len(requests)  # requests were gathered into shared batches


@pytest.mark.parametrize("body, status, reason, message", [
    (b'{"texts": ["a"', 400, "bad_json", "not valid JSON: Expecting"),
    (b'{"texts": ["\xff\xfe"]}', 400, "bad_encoding", "not valid UTF-8 (byte 0xff at offset 12)"),
    (b'["a"]', 400, "bad_request", "must be a JSON object"),
    (b'{"texts": "a"}', 400, "bad_request", '"texts" must be a list'),
    (b'{"texts": [1]}', 400, "bad_request", "texts[0] must be a string"),
    (b'{"texts": ["ok", "\\ud800"]}', 400, "bad_request", "texts[1] holds a lone surrogate"),
    (b'{"texts": [], "extra": 1}', 400, "bad_request", "unknown field(s) ['extra']"),
    (b'{"texts": [], "adapter": "nope"}', 404, "not_found", "no adapter of that name"),
    (b'{"texts": [], "adapter": "ner"}', 400, "bad_request", "a ner model: use /v1/tag"),
])
def test_bad_bodies_get_a_json_error_and_are_counted(full, body, status, reason, message):
    before = _count(_metrics(full.port), "charformer_errors_total", endpoint="segment", reason=reason)
    got, _, out = request(full.port, "POST", "/v1/segment", body)
    assert got == status and message in out["error"]
    assert _count(_metrics(full.port), "charformer_errors_total", endpoint="segment", reason=reason) == before + 1


@pytest.mark.parametrize("body, message", [
    ({"max_new_chars": 2001}, '"max_new_chars" must be an integer in [0, 2000]'),
    ({"temperature": -1}, '"temperature" must be a number'),
    ({"top_p": 0}, '"top_p" must be a number'), ({"seed": True}, '"seed" must be an integer'),
    ({"stream": "yes"}, '"stream" must be true or false'),
])
def test_bad_generation_requests(full, body, message):
    status, _, out = request(full.port, "POST", "/v1/generate", body)
    assert status == 400 and message in out["error"]
    status, _, out = request(full.port, "POST", "/v1/generate", b'{"temperature": NaN}')
    assert status == 400 and "NaN is not a JSON number" in out["error"]


def test_unknown_paths_and_methods_answer_json(full):
    assert request(full.port, "GET", "/nowhere")[::2] == (404, {"error": "Not Found"})
    assert request(full.port, "GET", "/v1/segment")[::2] == (405, {"error": "Method Not Allowed"})


def test_a_client_that_leaves_mid_body_is_counted_and_the_server_goes_on(full):
    before = _count(_metrics(full.port), "charformer_errors_total", endpoint="segment", reason="disconnected")
    with socket.create_connection(("127.0.0.1", full.port)) as s:
        s.sendall(b'POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"texts": ["')
    deadline = time.monotonic() + 10
    while _count(_metrics(full.port), "charformer_errors_total", endpoint="segment", reason="disconnected") == before:
        assert time.monotonic() < deadline, "the disconnect was not counted"
        time.sleep(0.01)
    assert request(full.port, "POST", "/v1/segment", {"texts": ["中国"]})[0] == 200


def test_token_limits_and_endpoints_not_served(guarded):
    port, ok = guarded.port, {"texts": ["中国人民"]}
    before = _metrics(port)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        status, got_headers, out = request(port, "POST", "/v1/segment", ok, headers)
        assert status == 401 and got_headers["www-authenticate"] == "Bearer" and "bearer token" in out["error"]
    assert request(port, "GET", "/v1/models")[0] == 401
    assert request(port, "POST", "/v1/segment", ok, AUTH)[::2] == (200, {"words": request(
        port, "POST", "/v1/segment", ok, AUTH)[2]["words"]})
    for path in ("/healthz", "/readyz", "/metrics", "/"):
        assert request(port, "GET", path)[0] == 200  # probes, scraper and page need no token

    cases = [(b"{" + b" " * 2000 + b"}", "body of 2,002 bytes; the limit is 2,000"),
             ({"texts": ["a"] * 6}, "6 texts; the limit is 5 per request"),
             ({"texts": ["a", "b" * 51]}, "texts[1] has 51 characters; the limit is 50")]
    for body, message in cases:
        status, _, out = request(port, "POST", "/v1/segment", body, AUTH)
        assert status == 413 and out["error"] == message

    # A body without Content-Length (chunked) is counted as it arrives.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/segment", body=iter([b'{"texts": ["', b"a" * 1500, b"a" * 1500, b'"]}']),
                 headers={**AUTH, "Transfer-Encoding": "chunked"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read()) == {"error": "body over 2,000 bytes"}
    conn.close()

    for endpoint in ("tag", "classify", "generate"):
        status, _, out = request(port, "POST", f"/v1/{endpoint}", {}, AUTH)
        assert status == 404 and out["error"].endswith("this server answers ['/v1/segment']")
    after = _metrics(port)
    for reason, n in (("unauthorized", 3), ("too_large", 4)):
        assert (_count(after, "charformer_errors_total", endpoint="segment", reason=reason)
                - _count(before, "charformer_errors_total", endpoint="segment", reason=reason)) == n
    assert (_count(after, "charformer_requests_total", endpoint="segment", status="401")
            - _count(before, "charformer_requests_total", endpoint="segment", status="401")) == 3


def test_concurrency_limit_answers_429(guarded):
    port = guarded.port
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(request, port, "POST", "/v1/segment", {"texts": [f"中国{i}"]}, AUTH) for i in range(2)]
        deadline = time.monotonic() + 10
        while _count(_metrics(port), "charformer_in_flight") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        metrics = _metrics(port)
        assert _count(metrics, "charformer_in_flight") == 2 and _count(metrics, "charformer_queue_depth") == 2
        status, headers, out = request(port, "POST", "/v1/segment", {"texts": ["x"]}, AUTH)
        assert status == 429 and headers["retry-after"] == "1" and "2 requests in progress" in out["error"]
        assert [f.result()[0] for f in held] == [200, 200]  # the two held requests are answered all the same
    assert _count(_metrics(port), "charformer_errors_total", endpoint="segment", reason="overloaded") == 1


def test_not_ready_until_warmed_up(tiny_segmenter, monkeypatch):
    release = threading.Event()
    warm_up = serve_app.models.warm_up
    monkeypatch.setattr(serve_app.models, "warm_up", lambda served: (release.wait(30), warm_up(served)))
    base, _ = load_served(tiny_segmenter, {}, device="cpu")
    server = ThreadServer(build_app(Service(base, {}, limits=Limits(), token=None, batch=BatchConfig())))
    try:
        assert request(server.port, "GET", "/readyz")[::2] == (503, {"status": "warming up"})
        status, headers, out = request(server.port, "POST", "/v1/segment", {"texts": ["中国"]})
        assert status == 503 and headers["retry-after"] == "1" and "warming up" in out["error"]
        release.set()
        server.wait_ready()
        assert request(server.port, "POST", "/v1/segment", {"texts": ["中国"]})[0] == 200
    finally:
        release.set()
        server.stop()


def test_int8_server_segments(tiny_segmenter):
    server = _start(tiny_segmenter, int8=True)
    try:
        status, _, out = request(server.port, "POST", "/v1/segment", {"texts": ["中国人民站起来了", "北京"]})
        assert status == 200 and ["".join(words) for words in out["words"]] == ["中国人民站起来了", "北京"]
    finally:
        server.stop()


def test_adapters_share_the_base_tensors(tiny):
    base, served = load_served(tiny["clm"], {"seg": tiny["cws"], "ner": tiny["ner"]}, device="cpu")
    seg, ner = served["seg"].model, served["ner"].model
    assert seg.body.tok_emb.weight is ner.body.tok_emb.weight is base.model.tok_emb.weight
    assert base.model.lm_head.weight is base.model.tok_emb.weight  # the LM's tied output layer stays tied
    q_seg, q_ner = seg.body.blocks[0].attn.q_proj, ner.body.blocks[0].attn.q_proj  # LoRA-wrapped
    assert q_seg.weight is q_ner.weight and not torch.equal(q_seg.lora.B, q_ner.lora.B)
    assert seg.head is not ner.head

    a, b, c = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    c.weight = b.weight  # tied within its model: replaced once, still tied
    assert share_identical_tensors([a, torch.nn.ModuleList([b, c])]) == 4 * (6 + 2)  # b's weight and bias once each
    assert a.weight is b.weight is c.weight and a.bias is b.bias and c.bias is not a.bias


def test_start_up_refusals(tiny, tiny_segmenter, tmp_path, monkeypatch):
    monkeypatch.delenv("CHARFORMER_API_TOKEN", raising=False)
    with pytest.raises(CharformerError, match="refusing to listen on 0.0.0.0 without an API token"):
        serve_main.main(["--ckpt", str(tiny_segmenter), "--host", "0.0.0.0"])
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CharformerError, match="empty: the API token is empty"):
        serve_main.main(["--ckpt", str(tiny_segmenter), "--token-file", str(tmp_path / "empty")])
    with pytest.raises(CharformerError, match="adapter was made for another base model"):
        load_served(tiny["other"], {"seg": tiny["cws"]}, device="cpu")
    with pytest.raises(CharformerError, match="a bidirectional .masked-LM. checkpoint serves nothing by itself"):
        load_served(tiny["mlm"], {}, device="cpu")
    with pytest.raises(CharformerError, match="with --adapter, --ckpt must be the base checkpoint"):
        load_served(tiny["cws"], {"ner": tiny["ner"]}, device="cpu")
    with pytest.raises(CharformerError, match="--adapter names must differ"):
        serve_main.main(["--ckpt", str(tiny["clm"]), "--adapter", f"a={tiny['cws']}", "--adapter", f"a={tiny['ner']}"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_finishes_the_request_in_flight_and_logs_no_text(tiny_segmenter):
    port, secret = _free_port(), "秘密的句子"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CHARFORMER_API_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "charformer.serve", "--ckpt", str(tiny_segmenter), "--port",
                             str(port), "--max-wait-ms", "1500"], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(port, "GET", "/readyz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(request, port, "POST", "/v1/segment", {"texts": [secret]}, AUTH)
            while _count(_metrics(port), "charformer_in_flight") < 1:
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            status, _, out = held.result(timeout=30)
        assert status == 200 and "".join(out["words"][0]) == secret
        assert proc.wait(timeout=30) == 0
        with pytest.raises(OSError):
            request(port, "GET", "/healthz", timeout=5)
        log = proc.stderr.read()
        assert "Shutting down" in log and "/v1/segment 200" in log and "1 texts, 5 characters" in log
        assert secret not in log and secret[:2] not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_batcher_gathers_splits_and_isolates_failures():
    async def scenario():
        calls = []

        def run(items):
            calls.append(list(items))
            if "boom" in items:
                raise ValueError("bad batch")
            return [item.upper() for item in items]

        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run, pool, max_batch=4, max_wait_s=0.05)
            jobs = [["a", "b"], ["c"], ["d", "e"], ["f", "g", "h", "i", "j"]]
            results = await asyncio.gather(*(batcher.submit(job) for job in jobs))
            assert results == [[x.upper() for x in job] for job in jobs]
            # a + c fill 3 of 4; d, e would overflow and wait for the next batch; the 5-item job runs alone
            assert calls == [["a", "b", "c"], ["d", "e"], ["f", "g", "h", "i", "j"]]
            calls.clear()
            outcomes = await asyncio.gather(batcher.submit(["boom"]), batcher.submit(["k"]), return_exceptions=True)
            assert [type(o) for o in outcomes] == [ValueError, ValueError]  # the whole batch failed together
            assert await batcher.submit(["l"]) == ["L"]  # and the batcher goes on
            gone = asyncio.ensure_future(batcher.submit(["gone"]))
            await asyncio.sleep(0)
            gone.cancel()  # a caller that left before its batch started is not run
            assert await batcher.submit(["m"]) == ["M"] and ["gone"] not in calls
            await batcher.close()

            alone = Batcher(run, pool, max_batch=1, max_wait_s=0.0)  # batching off
            calls.clear()
            await asyncio.gather(*(alone.submit([x]) for x in "xyz"))
            assert calls == [["x"], ["y"], ["z"]]
            await alone.close()

    asyncio.run(scenario())


def test_page_in_a_headless_browser(full):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver_path, "the page test needs Debian's chromium and chromium-driver (see .ci/setup)"
    options.binary_location = browser  # and no download: selenium is given both programs
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.get(f"http://127.0.0.1:{full.port}/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.ID, "status").text == "4 model(s)")

        def run(endpoint, text):
            box = driver.find_element(By.ID, f"{endpoint}-input")
            box.clear()
            box.send_keys(text)
            driver.find_element(By.ID, f"{endpoint}-run").click()
            output = driver.find_element(By.ID, f"{endpoint}-output")
            wait.until(lambda d: output.text not in ("", "…"))
            return output.text

        text = "北京天安门我们站起来了"
        words = request(full.port, "POST", "/v1/segment", {"texts": [text]})[2]["words"][0]
        assert run("segment", text) == " / ".join(words)

        text = "张三在北京大学工作"
        found = request(full.port, "POST", "/v1/tag", {"texts": [text]})[2]["entities"][0]
        assert run("tag", text) == "  ".join(f"{e['text']} [{e['type']} {e['start']}-{e['end']}]" for e in found)

        label = request(full.port, "POST", "/v1/classify", {"texts": ["房间很好"]})[2]["results"][0]["label"]
        assert run("classify", "房间很好").startswith(f"{label} (0: 0.")

        for field, value in (("generate-chars", "8"), ("generate-temperature", "1"), ("generate-seed", "3")):
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        expected = request(full.port, "POST", "/v1/generate", {"prompt": "中国", "max_new_chars": 8,
                                                               "temperature": 1, "seed": 3})[2]["text"]
        run("generate", "中国")
        output = driver.find_element(By.ID, "generate-output")
        wait.until(lambda d: output.get_attribute("data-done") == "true")
        assert output.text == "中国" + expected
    finally:
        driver.quit()
