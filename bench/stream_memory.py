"""Peak memory of `charformer.segment` against the size of its input: streamed, it should not grow.

    python -m bench.stream_memory                       # 4 MB and 40 MB of CTB6 text, a tiny model trained here
    python -m bench.stream_memory --ckpt out/ctb6_cws   # with a real segmenter (slower)

The inputs are the CTB6 training sentences, spaces removed, repeated until the file has --sizes megabytes
(10^6 bytes; one sentence per line). Each size is segmented by ``python -m charformer.segment`` in a fresh
process (one thread, output to /dev/null) whose peak resident set size is read from the kernel when it ends
(``os.wait4``: ru_maxrss of that child alone). The bar (issue 15): the largest input within 1.2x of the
smallest. Without --ckpt the model is trained here for 3 steps (1 layer, d_model 32, block 64, as the test
suite's tiny segmenter, on the first 2,000 CTB6 sentences): memory depends on the shapes, not on the weights.

Output: a table on stdout and JSON (--out, default out/stream_memory.json) with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import ROOT, data_dir

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def make_input(corpus: Path, path: Path, n_bytes: int) -> int:
    """Write CTB6 sentences (spaces removed), repeated, to `path` until it holds `n_bytes` bytes (cut at a line).
    Returns the number of characters."""
    lines = [line.replace(" ", "") + "\n" for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    written = chars = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        while written < n_bytes:
            for line in lines:
                size = len(line.encode("utf-8"))
                if written + size > n_bytes:
                    return chars
                f.write(line)
                written, chars = written + size, chars + len(line)
    return chars


def tiny_model(corpus: Path, out: Path) -> Path:
    """A 3-step segmenter of the test suite's shape (block 64), trained in out/ (reused if there)."""
    model = out / "model"
    if not (model / "best").exists():
        train = out / "train.txt"
        train.write_text("".join(corpus.read_text(encoding="utf-8").splitlines(keepends=True)[:2000]), encoding="utf-8")
        subprocess.run([sys.executable, str(ROOT / "finetune.py"), "--task", "cws", "--train", str(train), "--dev",
                        str(train), "--test", str(train), "--init", "scratch", "--out", str(model), "--n-layers", "1",
                        "--n-heads", "2", "--d-model", "32", "--block-size", "64", "--batch-size", "4", "--max-steps",
                        "3", "--device", "cpu"], check=True, env={**os.environ, **ONE_THREAD}, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
    return model / "best"


def peak_rss(ckpt: Path, path: Path, extra: list[str]) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of segmenting `path` in a fresh process."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "charformer.segment", "--ckpt", str(ckpt), str(path), *extra],
                                stdout=sink, env={**os.environ, **ONE_THREAD}, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"segment failed on {path} (exit {os.waitstatus_to_exitcode(status)})")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="segmentation checkpoint (default: a tiny one trained here)")
    p.add_argument("--corpus", default=str(data_dir() / "cws" / "ctb6" / "train.txt"))
    p.add_argument("--sizes", default="4,40", help="input sizes, MB (10^6 bytes), comma-separated")
    p.add_argument("--work", default=str(ROOT / "out" / "stream_memory"), help="folder for the inputs and model")
    p.add_argument("--out", default=str(ROOT / "out" / "stream_memory.json"))
    p.add_argument("--segment-args", default="", help="extra arguments for charformer.segment, e.g. '--int8'")
    args = p.parse_args(argv)
    work, corpus = Path(args.work), Path(args.corpus)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.ckpt) if args.ckpt else tiny_model(corpus, work)
    rows = []
    for mb in map(int, args.sizes.split(",")):
        path = work / f"input_{mb}mb.txt"
        chars = make_input(corpus, path, mb * 10**6)
        rss, seconds = peak_rss(ckpt, path, args.segment_args.split())
        rows.append({"mb": mb, "chars": chars, "peak_rss_mib": round(rss, 1), "seconds": round(seconds, 1),
                     "chars_per_s": round(chars / seconds)})
        print(f"{mb:>4} MB  {chars:>11,} chars  peak RSS {rss:7.1f} MiB  {seconds:7.1f} s", flush=True)
    ratio = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    print(f"peak RSS {rows[-1]['mb']} MB / {rows[0]['mb']} MB: {ratio:.3f} (bar: <= 1.2)")
    report = {"command": "python -m bench.stream_memory " + " ".join(sys.argv[1:]), "ckpt": str(ckpt),
              "machine": {"cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg()},
              "rows": rows, "ratio_largest_to_smallest": round(ratio, 3), "bar": 1.2}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
