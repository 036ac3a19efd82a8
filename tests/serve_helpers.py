"""Servers for the serving tests: tiny checkpoints, a `charformer.serve` app on a free loopback port in a
thread of the test process, and a plain HTTP client (http.client, so bodies can be any bytes)."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvicorn

TINY = ["--n-layers", "1", "--n-heads", "2", "--d-model", "32", "--block-size", "16", "--batch-size", "8",
        "--device", "cpu", "--log-interval", "5"]
WORDS = ["中国", "人民", "站", "起来", "了", "我们", "北京", "天安门", "，", "。"]


def make_models(root: Path) -> dict[str, Path]:
    """A causal LM pretrained for 5 steps ("clm"), LoRA adapters on it for segmentation, NER and
    classification trained for 5 steps each ("cws", "ner", "classify"), a second LM ("other") that the
    adapters do not fit, and a masked-LM encoder ("mlm"). A few seconds in all."""
    import finetune
    import pretrain

    rng = random.Random(0)
    corpus = "".join("".join(rng.choice(WORDS) for _ in range(8)) + "张三在北京大学工作，房间很好很差讨厌喜欢\n"
                     for _ in range(200))
    (root / "corpus.txt").write_text(corpus, encoding="utf-8")
    (root / "cws.txt").write_text("".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + "\n"
                                          for _ in range(30)), encoding="utf-8")
    sentence = "张 B-NAME\n三 E-NAME\n在 O\n北 B-ORG\n京 M-ORG\n大 M-ORG\n学 E-ORG\n工 O\n作 O\n"
    (root / "ner.bmes").write_text("\n".join([sentence] * 20), encoding="utf-8")
    rows = [f"{i % 2}\t房间{'很好喜欢' if i % 2 else '很差讨厌'}" for i in range(30)]
    (root / "classify.tsv").write_text("\n".join(["label\ttext_a", *rows]) + "\n", encoding="utf-8")
    paths = {name: root / name for name in ("clm", "other", "mlm", "cws", "ner", "classify")}
    pretrain.main(["--data", str(root / "corpus.txt"), "--out", str(paths["clm"]), "--max-steps", "5", *TINY])
    pretrain.main(["--data", str(root / "corpus.txt"), "--out", str(paths["other"]), "--max-steps", "1", *TINY])
    pretrain.main(["--data", str(root / "corpus.txt"), "--out", str(paths["mlm"]), "--max-steps", "1",
                   "--objective", "mlm", *TINY])
    for task, data in (("cws", "cws.txt"), ("ner", "ner.bmes"), ("classify", "classify.tsv")):
        finetune.main(["--task", task, "--train", str(root / data), "--dev", str(root / data), "--test",
                       str(root / data), "--init", str(paths["clm"]), "--method", "lora", "--out", str(paths[task]),
                       "--max-steps", "5", "--batch-size", "8", "--device", "cpu", "--log-interval", "5",
                       "--eval-interval", "1000"])
    return paths


class ThreadServer:
    """uvicorn serving `app` on 127.0.0.1 at a free port, in a thread; `stop()` shuts it down gracefully."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while request(self.port, "GET", "/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not become ready")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def request(port: int, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 30):
    """``(status, headers, content)``: content parsed as JSON when the response says it is JSON. `body`: bytes
    as they are, anything else as JSON."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body, ensure_ascii=False).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        kind = response.getheader("content-type", "")
        content = json.loads(raw) if kind.startswith("application/json") else raw.decode()
        return response.status, dict(response.getheaders()), content
    finally:
        conn.close()


def post_together(port: int, path: str, bodies: list) -> list:
    """POST each of `bodies` to `path` from its own thread, all released at once by a barrier, so that they reach
    the server together (what batching needs); the `request` results in the order of `bodies`."""
    barrier = threading.Barrier(len(bodies))

    def send(body):
        barrier.wait()
        return request(port, "POST", path, body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))
