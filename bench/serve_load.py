"""Load and faults for the HTTP server (`charformer.serve`), on loopback only, bounded in count and time.

    python bench/serve_load.py --ckpt out/serve_seg --texts $D/cws/ctb6/test.txt

Starts ``python -m charformer.serve`` on 127.0.0.1 (free ports) twice, with dynamic batching on and off. For
each number of concurrent clients in --clients, the two servers taking turns (off, then on, level by level, so
that other load on a shared machine falls on both alike), client threads (each with one keep-alive connection,
each request one sentence of --texts, a segmented file whose spaces are removed) send requests until
--requests have been answered or --seconds have passed, whichever comes first. It reports requests/s, p50 and
p99 latency and errors per level; the mean batch size the server ran (from its /metrics); and the server's
peak resident memory (VmHWM). Every answer is checked: status 200 and words that join back to the request's
sentence.

Then, with batching on and 8 clients keeping up a background load, the faults: clients that disconnect in
the middle of sending a body and right after sending a whole request, malformed JSON, invalid UTF-8, a body
over the size limit, a body holding 10,000 texts (over the texts limit), and one at the limit (1,000 texts).
The server must answer each with the expected status, keep answering, and lose none of the background
requests (each answered 200 with its own words). Finally SIGTERM: the server must exit 0.

The bar (issue 17): under 32 clients, batching gives at least 3x the requests/s of batching off, with no
errors. Output: a table on stdout and JSON with the command (--out, default out/serve_load.json).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only, by design: no option changes it


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a segmentation checkpoint (finetune.py --task cws --out)")
    p.add_argument("--texts", required=True, help="a segmented file (words separated by spaces): the sentences")
    p.add_argument("--clients", default="1,8,32", help="concurrent clients per level (default 1,8,32)")
    p.add_argument("--requests", type=int, default=3000, help="requests per level at most (default 3000)")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per level at most (default 20)")
    p.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's --max-wait-ms (default 5)")
    p.add_argument("--out", default=str(ROOT / "out" / "serve_load.json"),
                   help="results JSON (default out/serve_load.json; kept results go in bench/results/)")
    return p


# ------------------------------------------------------------------------------------------------ HTTP plumbing
def post(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def segment_once(conn, text: str) -> tuple[bool, float]:
    """(answered correctly, seconds) for one sentence: 200 and words that join back to it."""
    started = time.perf_counter()
    status, raw = post(conn, "/v1/segment", json.dumps({"texts": [text]}, ensure_ascii=False).encode())
    seconds = time.perf_counter() - started
    return status == 200 and "".join(json.loads(raw)["words"][0]) == text, seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """``python -m charformer.serve`` as a subprocess on a free loopback port."""

    def __init__(self, ckpt: str, *, batching: bool, max_batch: int, max_wait_ms: float, log: Path):
        self.port = free_port()
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "charformer.serve", "--ckpt", ckpt, "--host", HOST, "--port", str(self.port),
             "--batching", str(batching).lower(), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
             "--log-level", "warning"], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        deadline = time.monotonic() + 120
        while True:
            try:
                if get(self.port, "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {log}")
            time.sleep(0.2)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def metric(self, name: str, labels: str = "") -> float:
        """The sum of the samples called `name` in /metrics whose labels contain `labels` (``reason="x"``)."""
        return sum(float(line.rsplit(" ", 1)[1]) for line in get(self.port, "/metrics")[1].splitlines()
                   if (line.startswith(name + "{") or line.startswith(name + " ")) and labels in line)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.log.close()


# ------------------------------------------------------------------------------------------------ load
def run_clients(port: int, texts: list[str], clients: int, max_requests: int, seconds: float,
                stop: threading.Event | None = None) -> dict:
    """`clients` threads sending one sentence per request until `max_requests` are done, `seconds` have passed
    or `stop` is set. Returns counts, requests/s and latency percentiles (ms)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    issued = [0]
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        try:
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                with lock:
                    if issued[0] >= max_requests:
                        return
                    i = issued[0]
                    issued[0] += 1
                try:
                    ok, took = segment_once(conn, texts[(i * 7919 + k) % len(texts)])
                except (OSError, http.client.HTTPException, ValueError, KeyError):
                    ok, took = False, 0.0
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, port, timeout=60)
                with lock:
                    latencies.append(took)
                    errors[0] += not ok
        finally:
            conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else float("nan")

    return {"clients": clients, "requests": len(latencies), "errors": errors[0], "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "mean_ms": round(1000 * statistics.fmean(latencies), 2) if latencies else float("nan")}


def measure(servers: dict[str, Server], texts: list[str], levels: list[int], args) -> dict[str, list[dict]]:
    """Each level on each server, the servers taking turns level by level (off, on, off, on, ...), so that
    load from other processes on a shared machine falls on both alike."""
    for server in servers.values():
        run_clients(server.port, texts, 4, 40, 10)  # warm-up: the first batches of each shape pay for allocation
    rows: dict[str, list[dict]] = {key: [] for key in servers}
    for clients in levels:
        for key, server in servers.items():
            batches0, texts0 = server.metric("charformer_batch_size_count"), server.metric("charformer_batch_size_sum")
            row = run_clients(server.port, texts, clients, args.requests, args.seconds)
            batches = server.metric("charformer_batch_size_count") - batches0
            row["mean_batch_texts"] = round((server.metric("charformer_batch_size_sum") - texts0) / max(batches, 1), 2)
            rows[key].append(row)
            print(f"{key:13s} {clients:3d} clients: {row['requests_per_s']:8.1f} req/s  p50 {row['p50_ms']:7.2f} ms  "
                  f"p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}  batch {row['mean_batch_texts']:.1f}",
                  flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ faults
def raw_exchange(port: int, payload: bytes, *, read: bool = True) -> int | None:
    """Send `payload` as it is on a fresh connection; the response status (None when not read or none came)."""
    with socket.create_connection((HOST, port), timeout=30) as s:
        s.sendall(payload)
        if not read:
            return None
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return None
            data += chunk
        return int(data.split(b" ", 2)[1])


def request_bytes(body: bytes, *, length: int | None = None) -> bytes:
    head = (f"POST /v1/segment HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def run_faults(server: Server, texts: list[str], repeats: int = 20) -> dict:
    """The faults of the module docstring under a background load of 8 clients."""
    stop = threading.Event()
    background: dict = {}
    load = threading.Thread(target=lambda: background.update(run_clients(server.port, texts, 8, 10**9, 120, stop)))
    load.start()
    good = json.dumps({"texts": [texts[0]]}, ensure_ascii=False).encode()
    cases = {
        "disconnect_mid_body": (request_bytes(good[:10], length=len(good)), None),
        "disconnect_after_request": (request_bytes(good), None),
        "malformed_json": (request_bytes(b'{"texts": ["a"'), 400),
        "invalid_utf8": (request_bytes(b'{"texts": ["\xff\xfe"]}'), 400),
        "oversized_body": (request_bytes(b'{"texts": ["' + b"a" * (2 << 20) + b'"]}'), 413),
        "texts_10000": (request_bytes(json.dumps({"texts": ["中国"] * 10_000}, ensure_ascii=False).encode()), 413),
    }
    faults = {}
    gone_before = server.metric("charformer_errors_total", 'reason="disconnected"')
    for name, (payload, expected) in cases.items():
        statuses = [raw_exchange(server.port, payload, read=expected is not None) for _ in range(repeats)]
        faults[name] = {"sent": repeats, "expected_status": expected, "statuses": sorted(set(map(str, statuses))),
                        "as_expected": all(s == expected for s in statuses)}
    conn = http.client.HTTPConnection(HOST, server.port, timeout=120)
    batch = [texts[i % len(texts)] for i in range(1000)]  # at the texts limit: accepted and answered in full
    status, raw = post(conn, "/v1/segment", json.dumps({"texts": batch}, ensure_ascii=False).encode())
    conn.close()
    faults["texts_1000"] = {"sent": 1, "expected_status": 200, "statuses": [str(status)],
                            "as_expected": status == 200 and
                            ["".join(w) for w in json.loads(raw)["words"]] == batch}
    stop.set()
    load.join()
    still = get(server.port, "/healthz")[0] == 200 and segment_once(
        http.client.HTTPConnection(HOST, server.port, timeout=30), texts[1])[0]
    gone = server.metric("charformer_errors_total", 'reason="disconnected"') - gone_before
    return {"cases": faults, "server_counted_disconnects_mid_body": gone, "background_load": background,
            "still_answering": still,
            "background_lost_or_wrong": background["errors"]}


# ------------------------------------------------------------------------------------------------ main
def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_at_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]
    lines = Path(args.texts).read_text(encoding="utf-8").splitlines()
    texts = [line.replace(" ", "") for line in lines if line.strip()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = ROOT / "out" / "serve_load"
    logs.mkdir(parents=True, exist_ok=True)
    results = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
               "machine": machine(), "ckpt_config": json.loads((Path(args.ckpt) / "best" / "config.json").read_text()
                                                               if (Path(args.ckpt) / "best").is_dir() else
                                                               (Path(args.ckpt) / "config.json").read_text())["model"],
               "texts": {"file": args.texts, "count": len(texts),
                         "mean_chars": round(statistics.fmean(map(len, texts)), 1)},
               "server": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms}}
    servers = {f"batching_{'on' if on else 'off'}": Server(args.ckpt, batching=on, max_batch=args.max_batch,
                                                         max_wait_ms=args.max_wait_ms,
                                                         log=logs / f"batching_{'on' if on else 'off'}.log")
               for on in (False, True)}
    rows: dict[str, list[dict]] = {}
    try:
        rows = measure(servers, texts, levels, args)
        results["faults"] = run_faults(servers["batching_on"], texts)
    finally:
        for key, server in servers.items():
            peak = server.peak_rss_mb()
            results[key] = {"levels": rows.get(key, []), "peak_rss_mb": peak,
                            "exit_status_after_sigterm": server.stop()}
    at = {row["clients"]: row for row in results["batching_on"]["levels"]}
    off = {row["clients"]: row for row in results["batching_off"]["levels"]}
    top = max(levels)
    results["speedup_at_max_clients"] = {"clients": top, "x": round(at[top]["requests_per_s"] /
                                                                    off[top]["requests_per_s"], 2)}
    faults = results["faults"]
    results["bar"] = {"speedup_at_32_at_least_3x": results["speedup_at_max_clients"]["x"] >= 3 and top == 32,
                      "no_errors_at_32": at[top]["errors"] == 0 and off[top]["errors"] == 0,
                      "faults_as_expected": all(c["as_expected"] for c in faults["cases"].values()),
                      "no_accepted_request_lost": faults["background_lost_or_wrong"] == 0,
                      "still_answering": faults["still_answering"]}
    print(f"speed-up of batching at {top} clients: {results['speedup_at_max_clients']['x']}x")
    print("faults:", {name: c["statuses"] for name, c in faults["cases"].items()},
          f"background: {faults['background_load']['requests']} requests, "
          f"{faults['background_lost_or_wrong']} lost or wrong; still answering: {faults['still_answering']}")
    print("bar:", results["bar"])
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
