"""CPU inference throughput of word segmentation and text generation: fp32, int8 weights (charformer.quantize)
and, for comparison, bf16 autocast.

    python bench/inference.py --quick        # < 1 min: a segmenter of the real shape, trained here for 5 steps
    python bench/inference.py --ckpt out/ctb6_cws --test $D/cws/ctb6/test.txt --threads 1,2   # the measurement

For each thread count (--threads) and batch size (--batch-sizes) it measures

* segmentation, end to end: `tag_texts` over the input lines (the sentences of --test, or the lines of
  --text): windows through the model, Viterbi, words; characters of input per second;
* segmentation, forward passes alone: full windows of block_size characters; batch x block_size / seconds;
* generation: `generate` (greedy, KV cache) from a one-character prompt; batch x --new-chars / seconds. The
  model is --gen-ckpt (a causal pretrain.py checkpoint) or else a randomly initialised causal model with the
  segmenter's shape and vocabulary: the speed depends on the shapes, not on the weights.

Variants, each prepared as the prediction tools prepare a model (`prepare_for_inference`: q/k/v fused into one
layer) in a process whose malloc is set as theirs is (`charformer.heap`; --default-heap leaves glibc's
defaults, to see what that changes): fp32; int8 (`quantize_int8`: int8 weights and dynamically quantized
activations in the transformer's linear layers); bf16 (the fp32 model run under ``torch.autocast("cpu",
torch.bfloat16)``, which uses the CPU's bf16 matrix units where it has them: AMX or AVX512-BF16). Each figure is
the median of --repeats runs after a warm-up run, the variants alternating (fp32, int8, bf16, fp32, ...) so that
load from other processes on a shared machine falls on all alike.

Peak memory: the peak resident set size (VmHWM, /proc/self/status) of a fresh process that imports torch, loads
and converts the model and runs the workload once at the largest batch size, at the first --threads value;
`rss_after_load_mb` is its resident size just before the workload; `model_mb` is the size of the model's
state_dict as torch.save writes it (int8: the packed int8 weights and their scales).

Accuracy: with --test, the word F1 of each variant on that file (SIGHAN scoring, `cws_scores`) and the points
lost against fp32 (the bar for int8 on CTB6: at most 0.3); with --bpc-ckpt and --bpc-data, the bits/char of
each variant of that language model on its validation text, and what int8 and bf16 add.

Output: a table on stdout and JSON (--out; default out/inference_cpu.json, _quick with --quick; results kept on
purpose are copied to bench/results/).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import torch


from charformer.checkpoint import load_checkpoint, read_meta
from charformer.data import encode_array, read_text, split_corpus, split_lines
from charformer.errors import CharformerError, run_cli
from charformer.generate import generate
from charformer.objectives import lm_scores
from charformer.model import CharTransformer, ModelConfig
from charformer.heap import retain_freed_memory
from charformer.quantize import int8_engine, prepare_for_inference
from charformer.tasks.metrics import cws_scores
from charformer.tasks.checkpoint import load_task_checkpoint
from charformer.tasks.predict import tag_texts
from charformer.tasks.readers import read_cws
from charformer.tasks.schemes import spans_to_words

VARIANTS = ("fp32", "int8", "bf16")
# The shape of configs/zh_encoder_cpu.toml, the CTB6 segmenter's: speed figures only mean something at it.
QUICK_MODEL = ["--n-layers", "4", "--n-heads", "4", "--d-model", "192", "--block-size", "128"]
QUICK = {"batch_sizes": "8,64", "threads": "1", "repeats": 3, "new_chars": 32, "max_lines": 60}
QUICK_MEMORY = ("segmentation",)  # --quick measures the memory of segmentation only (each probe is a process)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="train a segmenter of the real shape for 5 steps on "
                   "synthetic segmentation of data/xiyouji_1-17.txt and measure a little of everything (< 1 min); "
                   "its F1 is meaningless")
    p.add_argument("--ckpt", help="segmentation checkpoint (finetune.py --task cws --out DIR)")
    p.add_argument("--test", help="segmented test file (e.g. CTB6 test.txt): each variant's word F1; its sentences "
                   "are also the input text")
    p.add_argument("--text", help="raw text to segment for the throughput figures, one sentence per line "
                   "(default: the sentences of --test)")
    p.add_argument("--gen-ckpt", help="causal checkpoint for the generation figures (default: random weights)")
    p.add_argument("--bpc-ckpt", help="causal checkpoint whose bits/char each variant reports (e.g. "
                   "out/shakespeare_char_cpu), on the held-out end of --bpc-data")
    p.add_argument("--bpc-data", help="the text --bpc-ckpt was pretrained on (e.g. data/shakespeare.txt), split as "
                   "pretrain.py split it")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    p.add_argument("--batch-sizes", default="1,8,32,128", help="windows (segmentation) or sequences (generation) "
                   "per forward pass, comma-separated (default 1,8,32,128)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per figure; the median is reported")
    p.add_argument("--max-lines", type=int, default=500, help="segment at most this many input lines per run "
                   "(default 500; F1 always uses the whole --test file)")
    p.add_argument("--new-chars", type=int, default=128, help="characters generated per sequence")
    p.add_argument("--default-heap", action="store_true", help="keep glibc's default malloc settings instead of "
                   "those the tools set (charformer.heap), to measure what they change")
    p.add_argument("--out", help="JSON output file")
    return p


# ----------------------------------------------------------------------------------------------- the models
def in_variant(variant: str, run: Callable) -> Callable:
    """The function `run` (no arguments) under the variant's autocast (bf16), or as it is."""
    if variant != "bf16":
        return run

    def autocast_run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return run()
    return autocast_run


def load_segmenter(ckpt: str, variant: str):
    model, vocab, task = load_task_checkpoint(ckpt)
    return prepare_for_inference(model, int8=variant == "int8"), vocab, task


def load_generator(gen_ckpt: str | None, seg_ckpt: str, variant: str) -> CharTransformer:
    if gen_ckpt:
        model = load_checkpoint(gen_ckpt)[0]
    else:
        cfg = read_meta(seg_ckpt)[1].to_dict()
        torch.manual_seed(0)
        model = CharTransformer(ModelConfig.from_dict({**cfg, "causal": True, "dropout": 0.0}))
    return prepare_for_inference(model, int8=variant == "int8")


# ---------------------------------------------------------------------------------------------- workloads
# Each returns a function that runs the workload once and returns how many characters it processed.
def segment_lines(model, vocab, task, lines: list[str], batch: int) -> Callable[[], int]:
    def run() -> int:
        tag_texts(model, vocab, lines, batch_size=batch, overlap=task["overlap"])
        return sum(map(len, lines))
    return run


def forward_windows(model, batch: int) -> Callable[[], int]:
    block = model.body.cfg.block_size
    ids = torch.randint(7, model.body.cfg.vocab_size, (batch, block), generator=torch.Generator().manual_seed(0))
    lengths = torch.full((batch,), block)

    def run() -> int:
        model(ids, lengths)
        return batch * block
    return run


def generate_chars(model, batch: int, new_chars: int) -> Callable[[], int]:
    prompt = torch.full((batch, 1), 7, dtype=torch.long)

    def run() -> int:
        generate(model, prompt, new_chars, temperature=0)
        return batch * new_chars
    return run


def median_rates(runs: dict[str, Callable[[], int]], repeats: int) -> dict[str, float]:
    """Median characters/second of each run, over `repeats` timed rounds that alternate between the runs."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for run in runs.values():
            run()  # warm-up: first-call allocations, oneDNN / fbgemm kernel selection
        for _ in range(repeats):
            for name, run in runs.items():
                t0 = time.perf_counter()
                chars = run()
                rates[name].append(chars / (time.perf_counter() - t0))
    return {name: statistics.median(r) for name, r in rates.items()}


# ------------------------------------------------------------------------------------------------- memory
def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_probe(spec: dict) -> dict:
    """Run in a fresh process: load the model of `spec`, run its workload once, report resident memory (MiB)."""
    torch.set_num_threads(spec["threads"])
    if not spec["default_heap"]:
        retain_freed_memory()
    if spec["workload"] == "segmentation":
        model, vocab, task = load_segmenter(spec["ckpt"], spec["variant"])
        run = segment_lines(model, vocab, task, spec["lines"], spec["batch"])
    else:
        model = load_generator(spec["gen_ckpt"], spec["ckpt"], spec["variant"])
        run = generate_chars(model, spec["batch"], spec["new_chars"])
    loaded = _status_mb("VmRSS")
    with torch.inference_mode():
        in_variant(spec["variant"], run)()
    state = io.BytesIO()
    torch.save(model.state_dict(), state)
    return {"rss_after_load_mb": round(loaded, 1), "peak_rss_mb": round(_status_mb("VmHWM"), 1),
            "model_mb": round(len(state.getvalue()) / 2**20, 2)}


def measure_memory(specs: list[dict]) -> list[dict]:
    """`memory_probe` of each spec, each in a process of its own (two at a time)."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=spawn, max_tasks_per_child=1) as pool:
        return list(pool.map(memory_probe, specs))


# ------------------------------------------------------------------------------------------------ accuracy
def word_f1(ckpt: str, variant: str, test: str) -> float:
    model, vocab, task = load_segmenter(ckpt, variant)
    sentences = read_cws(test)
    with torch.inference_mode():
        spans = in_variant(variant, lambda: tag_texts(model, vocab, [s.text for s in sentences], batch_size=64,
                                                      overlap=task["overlap"]))()
    return cws_scores([spans_to_words(s.text, s.spans) for s in sentences],
                      [spans_to_words(s.text, p) for s, p in zip(sentences, spans)], ())["f1"]


def lm_bpc(ckpt: str, variant: str, data: str) -> float:
    """Bits/char of the causal model `ckpt` on the held-out end of `data` (its config's val_fraction, as
    pretrain.py splits it without --val), every character scored once."""
    model = load_generator(ckpt, "", variant)
    meta, cfg, vocab = read_meta(ckpt)
    _, val_text = split_corpus(read_text(data), meta["data"]["val_fraction"])
    tokens = encode_array(vocab, val_text)
    with torch.inference_mode():
        return in_variant(variant, lambda: lm_scores(model, tokens, block_size=cfg.block_size, batch_size=32))()["bpc"]


# ------------------------------------------------------------------------------------------------ --quick
def train_quick_segmenter(root: Path) -> tuple[str, str]:
    """A segmenter of the real shape trained for 5 steps on xiyouji lines cut into random 1-3 character words
    (a speed subject, not a segmenter). Returns (checkpoint, segmented test file)."""
    rng = random.Random(0)
    text = read_text(Path("data") / "xiyouji_1-17.txt").replace(" ", "")  # ASCII spaces would read as separators
    lines = [line for line, _ in split_lines(text) if line.strip()]
    files = {}
    for split, part in (("train", lines[:400]), ("dev", lines[400:420]), ("test", lines[420:480])):
        segmented = []
        for line in part:
            starts = [0]
            while starts[-1] < len(line):
                starts.append(starts[-1] + rng.randint(1, 3))
            segmented.append(" ".join(line[a:b] for a, b in zip(starts, starts[1:])))
        files[split] = root / f"{split}.txt"
        files[split].write_text("\n".join(segmented) + "\n", encoding="utf-8")
    import finetune  # only --quick trains; the memory-probe processes, which import this file, stay lighter

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        finetune.main(["--task", "cws", "--train", str(files["train"]), "--dev", str(files["dev"]), "--test",
                       str(files["test"]), "--init", "scratch", "--out", str(root / "cws"), *QUICK_MODEL,
                       "--batch-size", "8", "--max-steps", "5", "--device", "cpu"])
    return str(root / "cws"), str(files["test"])


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.default_heap:
        retain_freed_memory()  # as the prediction tools do
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick and not args.ckpt:
            args.ckpt, quick_test = train_quick_segmenter(Path(tmp))
            args.test = args.test or quick_test
        if not args.ckpt or not (args.test or args.text):
            raise CharformerError("give --ckpt and --test (or --text), or --quick")
        lines = ([s.text for s in read_cws(args.test)] if not args.text else
                 [line for line, _ in split_lines(read_text(args.text)) if line])[: args.max_lines]
        results = run_all(args, threads, batches, lines)
    out = Path(args.out or f"out/inference_cpu{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{out}")
    return 0


def compare(runs: dict[str, Callable[[], int]], repeats: int) -> dict:
    """Median chars/s of each variant's run (see `median_rates`) and each one's speed-up over fp32."""
    rates = median_rates({v: in_variant(v, run) for v, run in runs.items()}, repeats)
    return {**{f"{v}_chars_per_s": round(r) for v, r in rates.items()},
            **{f"{v}_speedup": round(rates[v] / rates["fp32"], 3) for v in VARIANTS[1:]}}


def run_all(args, threads: list[int], batches: list[int], lines: list[str]) -> dict:
    seg = {v: load_segmenter(args.ckpt, v) for v in VARIANTS}
    gen = {v: load_generator(args.gen_ckpt, args.ckpt, v) for v in VARIANTS}
    body = seg["fp32"][0].body.cfg
    n_chars = sum(map(len, lines))
    results = {
        "setup": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                  "quantized_engine": int8_engine(), "ckpt": args.ckpt, "model": body.to_dict(),
                  "params": seg["fp32"][0].body.num_params(), "input_lines": len(lines), "input_chars": n_chars,
                  "repeats": args.repeats, "quick": args.quick, "default_heap": args.default_heap},
        "segmentation": [], "generation": [],
    }
    print(f"{cpu_name()}, torch {torch.__version__}; model d_model {body.d_model}, {body.n_layers} layers, block "
          f"{body.block_size}; segmenting {len(lines)} lines, {n_chars:,} characters")
    print(f"{'chars/s':<20}{'threads':>8}{'batch':>7}" + "".join(f"{v:>10}" for v in VARIANTS)
          + "".join(f"{v + ' x':>10}" for v in VARIANTS[1:]))
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for batch in batches:
            row = {"threads": n_threads, "batch_size": batch,
                   "end_to_end": compare({v: segment_lines(*seg[v], lines, batch) for v in VARIANTS}, args.repeats),
                   "forward": compare({v: forward_windows(seg[v][0], batch) for v in VARIANTS}, args.repeats)}
            results["segmentation"].append(row)
            generation = {"threads": n_threads, "batch_size": batch, "new_chars": args.new_chars,
                          **compare({v: generate_chars(gen[v], batch, args.new_chars) for v in VARIANTS}, args.repeats)}
            results["generation"].append(generation)
            for name, figures in (("segment, end to end", row["end_to_end"]), ("segment, forward", row["forward"]),
                                  ("generate", generation)):
                print(f"{name:<20}{n_threads:>8}{batch:>7}" + "".join(f"{figures[f'{v}_chars_per_s']:>10,}" for v in VARIANTS)
                      + "".join(f"{figures[f'{v}_speedup']:>9.2f}x" for v in VARIANTS[1:]))

    best = {}  # each variant at its own best setting
    for v in VARIANTS:
        top = max(results["segmentation"], key=lambda r: r["end_to_end"][f"{v}_chars_per_s"])
        best[v] = {"chars_per_s": top["end_to_end"][f"{v}_chars_per_s"], "threads": top["threads"],
                   "batch_size": top["batch_size"]}
    for v in VARIANTS[1:]:
        best[f"{v}_speedup"] = round(best[v]["chars_per_s"] / best["fp32"]["chars_per_s"], 3)
    results["segmentation_best"] = best
    print("best end-to-end segmentation: " + ", ".join(
        f"{v} {best[v]['chars_per_s']:,} chars/s (threads {best[v]['threads']}, batch {best[v]['batch_size']})"
        for v in VARIANTS) + "; " + ", ".join(f"{v} {best[f'{v}_speedup']:.2f}x" for v in VARIANTS[1:]))

    common = {"ckpt": args.ckpt, "gen_ckpt": args.gen_ckpt, "default_heap": args.default_heap, "threads": threads[0],
              "batch": max(batches), "new_chars": args.new_chars, "lines": lines}
    workloads = QUICK_MEMORY if args.quick else ("segmentation", "generation")
    specs = [{**common, "workload": w, "variant": v} for w in workloads for v in VARIANTS]
    results["memory"] = {}
    for spec, memory in zip(specs, measure_memory(specs)):
        results["memory"].setdefault(spec["workload"], {})[spec["variant"]] = memory
    for workload, by_variant in results["memory"].items():
        print(f"memory, {workload} at batch {max(batches)}: " + "; ".join(
            f"{v} peak RSS {m['peak_rss_mb']:.0f} MiB (after load {m['rss_after_load_mb']:.0f}), model "
            f"{m['model_mb']:.2f} MiB" for v, m in by_variant.items()))

    if args.test:
        torch.set_num_threads(threads[0])
        f1 = {v: word_f1(args.ckpt, v, args.test) for v in VARIANTS}
        results["accuracy"] = {"test": args.test, **{f"{v}_f1": round(f, 5) for v, f in f1.items()},
                               **{f"{v}_f1_points_lost": round(100 * (f1["fp32"] - f1[v]), 3) for v in VARIANTS[1:]}}
        print(f"word F1 on {args.test}: " + ", ".join(f"{v} {f:.4f}" for v, f in f1.items()) + "; points lost: "
              + ", ".join(f"{v} {results['accuracy'][f'{v}_f1_points_lost']:+.2f}" for v in VARIANTS[1:]))
    if args.bpc_ckpt and args.bpc_data:
        torch.set_num_threads(threads[0])
        bpc = {v: lm_bpc(args.bpc_ckpt, v, args.bpc_data) for v in VARIANTS}
        results["lm_accuracy"] = {"ckpt": args.bpc_ckpt, "data": args.bpc_data,
                                  **{f"{v}_val_bpc": round(b, 5) for v, b in bpc.items()},
                                  **{f"{v}_bpc_added": round(bpc[v] - bpc["fp32"], 5) for v in VARIANTS[1:]}}
        print(f"val bits/char of {args.bpc_ckpt}: " + ", ".join(f"{v} {b:.4f}" for v, b in bpc.items()))
    return results


if __name__ == "__main__":
    run_cli(main)
