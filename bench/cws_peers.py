"""Our segmenter side by side with jieba and THULAC, the segmenters most Chinese-text users start from, on every
corpus in the shared CWS data: word F1, OOV recall, speed at one thread, peak memory.

    pip install -e .[peers]                                   # jieba and THULAC (never needed by the test suite)
    python -m bench.cws_peers                                 # the peers alone
    python -m bench.cws_peers --ckpt out/ctb6_cws --int8      # and our segmenter

The peers follow their own segmentation standards, not the corpora's: jieba its dictionary (and an HMM for
unknown words), THULAC the standard of its own training corpus. Their scores here say what a user gets out of
the box on these texts, not how well they learn a standard. Ours is trained for one standard (--ckpt): its
score on the other corpora is out of domain.

How it is measured:

* input: each corpus's test file (dev where there is no test: Weibo), the sentences rebuilt from the gold words
  (joined without separators), one call per sentence for the peers, one `Segmenter.segment` call (batches of
  --batch-size) for ours, with protection of numbers and Latin words on, no user dictionary;
* scoring: `charformer.tasks.metrics.cws_scores` (SIGHAN rules) against the gold words, OOV recall against the
  corpus's training words. THULAC drops or merges some whitespace; a predicted word that is not the next
  piece of the text is re-aligned (`align`) and the sentences where that happened are counted
  (``altered_sentences``);
* speed: each tool runs in its own worker process (OMP/MKL threads 1, torch.set_num_threads(1)), started once;
  the parent asks the workers in turn (tool order rotated every round) to segment each corpus, --rounds
  times, so that load from other processes on a shared machine falls on all alike; chars/s = characters /
  the median of a tool's times on the corpus (loading not included);
* memory: each worker's peak resident set size (VmHWM in /proc/self/status) after all its runs: the
  interpreter, the tool, its model and the largest corpus.

Output: a table on stdout and JSON (--out, default out/cws_peers.json) with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


from bench import ROOT, data_dir
from charformer.tasks.metrics import cws_scores
from charformer.tasks.readers import read_cws
from charformer.tasks.schemes import spans_to_words

PEERS = ("jieba", "thulac")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def load_tool(name: str, args: argparse.Namespace):
    """A function texts -> word lists for tool `name`."""
    if name == "jieba":
        import jieba

        jieba.setLogLevel(60)
        jieba.initialize()
        return lambda texts: [jieba.lcut(t) for t in texts]
    if name == "thulac":
        import thulac

        model = thulac.thulac(seg_only=True)
        return lambda texts: [[w for w, _ in model.cut(t, text=False)] for t in texts]
    import torch

    from charformer.tasks.segmenter import Segmenter

    torch.set_num_threads(1)
    segmenter = Segmenter.load(args.ckpt, device="cpu", int8=args.int8, batch_size=args.batch_size)
    return segmenter.segment


def worker(args: argparse.Namespace) -> None:
    """Serve requests on stdin, one JSON line each: {"path": gold file, "words": bool} -> {"seconds", "words"?};
    {"rss": true} -> {"peak_rss_mb"}."""
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # THULAC prints on load; stdout carries the replies
        segment = load_tool(args.worker, args)
    for request in map(json.loads, sys.stdin):
        if request.get("rss"):
            reply = {"peak_rss_mb": round(peak_rss_mb(), 1)}
        else:
            texts = [s.text for s in read_cws(request["path"])]
            start = time.perf_counter()
            words = segment(texts)
            reply = {"seconds": time.perf_counter() - start}
            if request["words"]:
                reply["words"] = words
        print(json.dumps(reply, ensure_ascii=False), flush=True)


class Worker:
    """A tool's worker process and its request/reply pipe."""

    def __init__(self, name: str, args: argparse.Namespace):
        argv = [sys.executable, "-m", "bench.cws_peers", "--worker", name, "--batch-size", str(args.batch_size)]
        if name == "charformer":
            argv += ["--ckpt", args.ckpt] + (["--int8"] if args.int8 else [])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     encoding="utf-8", env={**os.environ, **ONE_THREAD}, cwd=ROOT)

    def ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.proc.args[3]} died (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def align(text: str, words: list[str]) -> tuple[list[str], bool]:
    """`words` as a segmentation of `text`: each word found at the current position is kept; one that is not
    (a peer dropped, merged or changed characters) is skipped, and text it did not account for becomes words
    of its own at the next boundary that matches. Returns the words and whether anything had to be fixed."""
    out, pos, fixed = [], 0, False
    for word in filter(None, words):
        if text.startswith(word, pos):
            out.append(word)
            pos += len(word)
            continue
        fixed = True
        found = text.find(word, pos) if word.strip() else -1
        if found > pos:
            out += [text[pos:found], word]
            pos = found + len(word)
    if pos < len(text):
        out.append(text[pos:])
        fixed = True
    return out, fixed


def corpora(data: Path, names: list[str]) -> list[tuple[str, Path, Path]]:
    """(name, evaluation file, training file) of each corpus: its test split, or dev where there is none."""
    found = []
    for name in names:
        folder = data / name
        evaluation = folder / "test.txt" if (folder / "test.txt").exists() else folder / "dev.txt"
        found.append((name, evaluation, folder / "train.txt"))
    return found


def measure(args: argparse.Namespace) -> dict:
    tools = list(PEERS) + (["charformer"] if args.ckpt else [])
    sets = corpora(Path(args.data), args.corpora.split(","))
    workers = {name: Worker(name, args) for name in tools}
    times = {(tool, c): [] for tool in tools for c, _, _ in sets}
    words = {}
    try:
        for r in range(args.rounds):
            order = tools[r % len(tools):] + tools[: r % len(tools)]
            for corpus, path, _ in sets:
                for tool in order:
                    reply = workers[tool].ask({"path": str(path), "words": r == 0})
                    times[tool, corpus].append(reply["seconds"])
                    if r == 0:
                        words[tool, corpus] = reply["words"]
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        rss = {tool: w.ask({"rss": True})["peak_rss_mb"] for tool, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    rows = []
    for corpus, path, train in sets:
        gold = read_cws(path)
        gold_words = [spans_to_words(s.text, s.spans) for s in gold]
        train_words = {w for s in read_cws(train) for w in spans_to_words(s.text, s.spans)}
        n_chars = sum(len(s.text) for s in gold)
        for tool in tools:
            aligned = [align(s.text, w) for s, w in zip(gold, words[tool, corpus])]
            scores = cws_scores(gold_words, [a for a, _ in aligned], train_words)
            rows.append({
                "corpus": corpus, "file": str(path), "sentences": len(gold), "chars": n_chars, "tool": tool,
                "f1": round(100 * scores["f1"], 2), "precision": round(100 * scores["precision"], 2),
                "recall": round(100 * scores["recall"], 2), "oov_recall": round(100 * scores["oov_recall"], 2),
                "oov_rate": round(100 * scores["oov_rate"], 2),
                "chars_per_s": round(n_chars / statistics.median(times[tool, corpus])),
                "seconds": [round(t, 3) for t in times[tool, corpus]],
                "altered_sentences": sum(fixed for _, fixed in aligned), "peak_rss_mb": rss[tool]})
    return {"rows": rows, "peak_rss_mb": rss}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("jieba", "thulac", "torch"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def table(rows: list[dict]) -> str:
    lines = ["| corpus | tool | F1 | OOV recall | chars/s (1 thread) | peak RSS MiB | altered sentences |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['corpus']} | {r['tool']} | {r['f1']:.1f} | {r['oov_recall']:.1f} | {r['chars_per_s']:,} | "
              f"{r['peak_rss_mb']:.0f} | {r['altered_sentences']} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="our segmentation checkpoint (finetune.py --task cws); without it, the peers alone")
    p.add_argument("--int8", action="store_true", help="ours with int8 weights (charformer.quantize)")
    p.add_argument("--batch-size", type=int, default=64, help="ours: windows per forward pass")
    p.add_argument("--data", default=str(data_dir() / "cws"), help="folder of CWS corpora")
    p.add_argument("--corpora", default="ctb6,udc,weibo,zx", help="comma-separated corpus folders under --data")
    p.add_argument("--rounds", type=int, default=3, help="timed runs per tool and corpus (median)")
    p.add_argument("--out", default=str(ROOT / "out" / "cws_peers.json"), help="JSON results")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    result = measure(args)
    report = {
        "command": "python -m bench.cws_peers " + " ".join(sys.argv[1:]),
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()},
        "versions": versions(),
        "note": "jieba and THULAC follow their own segmentation standards, not these corpora's; ours, where "
                "present, is trained for one corpus's standard (--ckpt) and is out of domain on the others.",
        **result,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(table(result["rows"]))


if __name__ == "__main__":
    main()
