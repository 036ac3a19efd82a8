"""Our segmenter side by side with jieba and THULAC, the segmenters most Chinese-text users start from, on every
corpus in the shared CWS data: word F1, OOV recall, speed at one thread, peak memory.

    pip install -e .[peers]                                   # jieba and THULAC (never needed by the test suite)
    python -m bench.cws_peers                                 # the peers alone
    python -m bench.cws_peers --ckpt plain=out/ctb6_cws --ckpt student=out/ctb6_student \\
        --precision fp32,int8 --batch-size 16,64             # and our segmenters, in the same rounds
    python -m bench.cws_frontier --json out/cws_peers.json    # the F1/speed frontier as a PNG
    python -m bench.cws_peers --ckpt mc=out/mc_cws --standard-map mc:ctb6=ctb6,udc=udc,weibo=weibo,zx=zx

The peers follow their own segmentation standards, not the corpora's: jieba its dictionary (and an HMM for
unknown words), THULAC the standard of its own training corpus. Their scores here say what a user gets out of
the box on these texts, not how well they learn a standard. Each of ours is trained for one standard (--ckpt):
its score on the other corpora is out of domain.

How it is measured:

* input: each corpus's test file (dev where there is no test: Weibo), the sentences rebuilt from the gold words
  (joined without separators), one call per sentence for the peers, one `Segmenter.segment` call (batches of
  --batch-size windows) for ours, with protection of numbers and Latin words on, no user dictionary;
* our variants: every --ckpt at every --precision and every --batch-size, each a row: fp32; int8 (weights
  quantized as `charformer.quantize` does for --int8); bf16 (the fp32 model under ``torch.autocast("cpu",
  torch.bfloat16)``, as `bench/inference.py` runs it); the malloc settings of the prediction tools
  (`charformer.heap`) in every worker of ours; a multi-criteria segmenter (one model for several standards,
  `finetune.py --train NAME=PATH ...`) is set on each corpus to the standard --standard-map names for it
  (``Segmenter.load(..., standard=NAME)``, one copy of the model per standard in its worker);
* scoring: `charformer.tasks.metrics.cws_scores` (SIGHAN rules) against the gold words, OOV recall against the
  corpus's training words. THULAC drops or merges some whitespace; a predicted word that is not the next
  piece of the text is re-aligned (`align`) and the sentences where that happened are counted
  (``altered_sentences``);
* speed: each tool (each variant of ours) runs in its own worker process (OMP/MKL threads 1,
  torch.set_num_threads(1)), started once; the parent asks the workers in turn to segment each corpus,
  --rounds times, the peers interleaved with ours (THULAC, ours 1, jieba, ours 2, ours 3, ...) and the order
  rotated every round, so that load from other processes on a shared machine falls on all alike; chars/s =
  characters / the median of a tool's times on the corpus (loading not included). ``vs_thulac`` is a row's
  chars/s over THULAC's on the same corpus, measured in the same rounds;
* memory: each worker's peak resident set size (VmHWM in /proc/self/status) after all its runs: the
  interpreter, the tool, its model and the largest corpus.

Output: a table on stdout and JSON (--out, default out/cws_peers.json) with the command: one row per corpus
and tool, a row of ours also naming its ``label``, ``ckpt``, ``dtype`` (fp32, int8, bf16), ``batch_size`` and
``standard``. `python -m bench.cws_frontier` draws a corpus's rows as the F1/speed frontier.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench import ROOT, data_dir
from charformer.errors import CharformerError, run_cli
from charformer.tasks.metrics import cws_scores
from charformer.tasks.readers import read_cws
from charformer.tasks.schemes import spans_to_words

PEERS = ("thulac", "jieba")  # THULAC first: the reference of the speed ratios, and the first of each round
PRECISIONS = ("fp32", "int8", "bf16")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Ours:
    """One variant of our segmenter: checkpoint directory `ckpt` (named `label` in the table), `precision`
    (one of PRECISIONS), `batch_size` (windows per forward pass) and, for a multi-criteria segmenter,
    `standards`: the standard it is set to on each corpus, as (corpus, standard) pairs."""

    label: str
    ckpt: str
    precision: str
    batch_size: int
    standards: tuple[tuple[str, str], ...] = ()

    def standard(self, corpus: str) -> str | None:
        return dict(self.standards).get(corpus)

    @property
    def name(self) -> str:
        return f"ours:{self.label} {self.precision} b{self.batch_size}"

    def worker_argv(self) -> list[str]:
        pairs = ",".join(f"{corpus}={standard}" for corpus, standard in self.standards)
        return ["--worker", "ours", "--ckpt", f"{self.label}={self.ckpt}", "--precision", self.precision,
                "--batch-size", str(self.batch_size)] + (["--standard-map", f"{self.label}:{pairs}"] if pairs else [])


Tool = str | Ours  # a peer's name, or a variant of ours


def tool_name(tool: Tool) -> str:
    return tool.name if isinstance(tool, Ours) else tool


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def load_tool(tool: Tool, standard: str | None = None) -> Callable[[list[str]], list[list[str]]]:
    """A function texts -> word lists for `tool` (ours: set to `standard`, if not None)."""
    if tool == "jieba":
        import jieba

        jieba.setLogLevel(60)
        jieba.initialize()
        return lambda texts: [jieba.lcut(t) for t in texts]
    if tool == "thulac":
        import thulac

        model = thulac.thulac(seg_only=True)
        return lambda texts: [[w for w, _ in model.cut(t, text=False)] for t in texts]
    import torch

    from bench.inference import in_variant
    from charformer.heap import retain_freed_memory
    from charformer.tasks.segmenter import Segmenter

    torch.set_num_threads(1)
    retain_freed_memory()  # as the prediction tools do (charformer.tasks.tool.load_for)
    segmenter = Segmenter.load(tool.ckpt, device="cpu", int8=tool.precision == "int8", batch_size=tool.batch_size,
                               **({"standard": standard} if standard else {}))
    return lambda texts: in_variant(tool.precision, lambda: segmenter.segment(texts))()


def worker(tool: Tool) -> None:
    """Serve requests on stdin, one JSON line each: {"corpus", "path": gold file, "words": bool} -> {"seconds",
    "words"?}; {"rss": true} -> {"peak_rss_mb"}. The tool is loaded at the first request (for a multi-criteria
    segmenter, at the first request of each standard), before the clock starts."""
    import contextlib

    loaded = {}
    for request in map(json.loads, sys.stdin):
        if request.get("rss"):
            reply = {"peak_rss_mb": round(peak_rss_mb(), 1)}
        else:
            standard = tool.standard(request["corpus"]) if isinstance(tool, Ours) else None
            if standard not in loaded:
                with contextlib.redirect_stdout(sys.stderr):  # THULAC prints on load; stdout carries the replies
                    loaded[standard] = load_tool(tool, standard)
            segment = loaded[standard]
            texts = [s.text for s in read_cws(request["path"])]
            start = time.perf_counter()
            words = segment(texts)
            reply = {"seconds": time.perf_counter() - start}
            if request["words"]:
                reply["words"] = words
        print(json.dumps(reply, ensure_ascii=False), flush=True)


class Worker:
    """A tool's worker process and its request/reply pipe."""

    def __init__(self, tool: Tool):
        self.name = tool_name(tool)
        argv = [sys.executable, "-m", "bench.cws_peers"]
        argv += tool.worker_argv() if isinstance(tool, Ours) else ["--worker", tool]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     encoding="utf-8", env={**os.environ, **ONE_THREAD}, cwd=ROOT)

    def ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise CharformerError(f"worker {self.name} died (exit {self.proc.wait()}); its error is above")
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


def interleave(peers: list[Tool], ours: list[Ours]) -> list[Tool]:
    """The order of a round: the peers alternating with our variants (THULAC, ours 1, jieba, ours 2, ours 3, ...)."""
    order: list[Tool] = []
    for i in range(max(len(peers), len(ours))):
        order += peers[i : i + 1] + ours[i : i + 1]
    return order


def measure(tools: list[Tool], sets: list[tuple[str, Path, Path]], rounds: int) -> dict:
    """Every tool on every corpus, `rounds` times in rotated order (see the module docstring): the rows and each
    worker's peak RSS (MiB)."""
    names = [tool_name(t) for t in tools]
    workers = {tool_name(t): Worker(t) for t in tools}
    times = {(name, c): [] for name in names for c, _, _ in sets}
    words = {}
    try:
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for corpus, path, _ in sets:
                for name in order:
                    reply = workers[name].ask({"corpus": corpus, "path": str(path), "words": r == 0})
                    times[name, corpus].append(reply["seconds"])
                    if r == 0:
                        words[name, corpus] = reply["words"]
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
        rss = {name: w.ask({"rss": True})["peak_rss_mb"] for name, w in workers.items()}
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
            name = tool_name(tool)
            aligned = [align(s.text, w) for s, w in zip(gold, words[name, corpus])]
            scores = cws_scores(gold_words, [a for a, _ in aligned], train_words)
            variant = ({"label": tool.label, "ckpt": tool.ckpt, "dtype": tool.precision,  # "precision": the score's
                        "batch_size": tool.batch_size, "standard": tool.standard(corpus)}
                       if isinstance(tool, Ours) else {})
            rows.append({
                "corpus": corpus, "file": str(path), "sentences": len(gold), "chars": n_chars, "tool": name,
                **variant,
                "f1": round(100 * scores["f1"], 2), "precision": round(100 * scores["precision"], 2),
                "recall": round(100 * scores["recall"], 2), "oov_recall": round(100 * scores["oov_recall"], 2),
                "oov_rate": round(100 * scores["oov_rate"], 2),
                "chars_per_s": round(n_chars / statistics.median(times[name, corpus])),
                "seconds": [round(t, 3) for t in times[name, corpus]],
                "altered_sentences": sum(fixed for _, fixed in aligned), "peak_rss_mb": rss[name]})
    add_thulac_ratios(rows)
    return {"rows": rows, "peak_rss_mb": rss}


def add_thulac_ratios(rows: list[dict]) -> None:
    """Set each row's ``vs_thulac``: its chars/s over THULAC's on the same corpus (None without a THULAC row)."""
    thulac = {r["corpus"]: r["chars_per_s"] for r in rows if r["tool"] == "thulac"}
    for r in rows:
        base = thulac.get(r["corpus"])
        r["vs_thulac"] = round(r["chars_per_s"] / base, 3) if base else None


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
    lines = ["| corpus | tool | F1 | OOV recall | chars/s (1 thread) | x THULAC | peak RSS MiB | altered sentences |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['corpus']} | {r['tool']} | {r['f1']:.1f} | {r['oov_recall']:.1f} | {r['chars_per_s']:,} | "
              f"{r['vs_thulac']:.2f} | {r['peak_rss_mb']:.0f} | {r['altered_sentences']} |" for r in rows]
    return "\n".join(lines)


def comma_list(text: str, convert: Callable, what: str) -> list:
    """The comma-separated values of `text`, each through `convert`. Raises CharformerError naming `what`."""
    try:
        values = [convert(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise CharformerError(f"{what}: {e}") from None
    if not values:
        raise CharformerError(f"{what}: no value in {text!r}")
    return values


def parse_ckpt(text: str) -> tuple[str, str]:
    """``LABEL=DIR`` (or ``DIR``, labelled by its folder name) -> (label, DIR)."""
    label, sep, path = text.partition("=")
    return (label, path) if sep else (Path(text).name, text)


def precision(text: str) -> str:
    if text not in PRECISIONS:
        raise ValueError(f"{text!r} is not one of {', '.join(PRECISIONS)}")
    return text


def batch_size(text: str) -> int:
    if int(text) < 1:
        raise ValueError(f"a batch size must be >= 1, got {text}")
    return int(text)


def standard_maps(values: list[str]) -> dict[str, tuple[tuple[str, str], ...]]:
    """``LABEL:CORPUS=STANDARD[,CORPUS=STANDARD...]`` values (--standard-map) -> (corpus, standard) pairs by
    checkpoint label. Raises CharformerError for a malformed value or a label given twice."""
    maps = {}
    for value in values:
        label, colon, pairs = value.partition(":")
        parsed = [pair.partition("=") for pair in pairs.split(",")]
        if not colon or not label or any(not c or not eq or not s for c, eq, s in parsed):
            raise CharformerError(f"--standard-map {value!r}: need LABEL:CORPUS=STANDARD[,CORPUS=STANDARD...]")
        if label in maps:
            raise CharformerError(f"--standard-map: label {label!r} given twice")
        maps[label] = tuple((c.strip(), s.strip()) for c, _, s in parsed)
    return maps


def our_variants(ckpts: list[str], precisions: str, batch_sizes: str,
                 standards: dict[str, tuple[tuple[str, str], ...]] | None = None) -> list[Ours]:
    """Every checkpoint of `ckpts` (``LABEL=DIR`` or ``DIR``) at every precision and batch size of the
    comma-separated lists, each with its `standards` (`standard_maps`, by label). Raises CharformerError for a
    missing directory, a repeated label, an unknown precision, a batch size < 1 or a standard map for no
    checkpoint."""
    standards = standards or {}
    named = [parse_ckpt(c) for c in ckpts]
    labels = [label for label, _ in named]
    if len(set(labels)) < len(labels):
        raise CharformerError(f"--ckpt labels must differ, got {labels}")
    for label, path in named:
        if not label or not Path(path).is_dir():
            raise CharformerError(f"--ckpt {label}={path}: need LABEL=DIR with an existing checkpoint directory")
    precisions = comma_list(precisions, precision, "--precision")
    sizes = comma_list(batch_sizes, batch_size, "--batch-size")
    unknown = sorted(set(standards) - set(labels))
    if unknown:
        raise CharformerError(f"--standard-map for {', '.join(unknown)}: no --ckpt has that label ({labels})")
    return [Ours(label, path, p, b, standards.get(label, ())) for label, path in named for p in precisions
            for b in sizes]


def check_standards(ours: list[Ours], corpora: list[str]) -> None:
    """Raise CharformerError unless every variant with a standard map names a standard for each of `corpora`
    (a multi-criteria segmenter needs one everywhere), and for no other corpus."""
    for tool in ours:
        named = [corpus for corpus, _ in tool.standards]
        if tool.standards and sorted(named) != sorted(corpora):
            raise CharformerError(f"--standard-map {tool.label}: names corpora {named}; measured are {corpora}, "
                                  "each needs one standard")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", default=[], metavar="LABEL=DIR",
                   help="one of our segmentation checkpoints (finetune.py --task cws), repeatable; LABEL names it "
                        "in the table (default: the folder name). Without it, the peers alone")
    p.add_argument("--precision", default="fp32", help=f"ours: comma-separated, of {', '.join(PRECISIONS)}")
    p.add_argument("--batch-size", default="64", help="ours: windows per forward pass, comma-separated")
    p.add_argument("--data", default=str(data_dir() / "cws"), help="folder of CWS corpora")
    p.add_argument("--corpora", default="ctb6,udc,weibo,zx", help="comma-separated corpus folders under --data")
    p.add_argument("--rounds", type=int, default=3, help="timed runs per tool and corpus (median)")
    p.add_argument("--out", default=str(ROOT / "out" / "cws_peers.json"), help="JSON results")
    p.add_argument("--standard-map", action="append", default=[], metavar="LABEL:CORPUS=STANDARD,...",
                   help="the standard a multi-criteria checkpoint (--ckpt LABEL=DIR) is set to on each corpus, "
                        "e.g. mc:ctb6=ctb6,udc=udc,weibo=weibo,zx=zx; repeatable, one per such checkpoint")
    p.add_argument("--worker", choices=(*PEERS, "ours"), help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    ours = our_variants(args.ckpt, args.precision, args.batch_size, standard_maps(args.standard_map))
    if args.worker:
        return worker(ours[0] if args.worker == "ours" else args.worker)
    if args.rounds < 1:
        raise CharformerError(f"--rounds must be >= 1, got {args.rounds}")
    check_standards(ours, args.corpora.split(","))
    sets = corpora(Path(args.data), args.corpora.split(","))
    result = measure(interleave(list(PEERS), ours), sets, args.rounds)
    report = {
        "command": "python -m bench.cws_peers " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()},
        "versions": versions(),
        "note": "jieba and THULAC follow their own segmentation standards, not these corpora's; each of ours "
                "is trained for one corpus's standard (--ckpt) and is out of domain on the others.",
        **result,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(table(result["rows"]))


if __name__ == "__main__":
    run_cli(main)
