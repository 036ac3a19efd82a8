"""Draw the figures of docs/ from the repository's own data and results files.

    python docs/figures/make_figures.py            # writes docs/figures/*.png

* coverage.png: share of the text covered by the k most frequent characters (data/*.txt), chapter 1;
* memory_traffic.png: HBM bytes per (batch, head) of naive and flash attention, from the formula of chapter 3;
* label_efficiency.png: CTB6 test F1 against labelled sentences, pretrained vs from scratch, read from
  bench/results/peft_compare_cws.json (written by bench/peft_compare.py), chapter 5 and docs/results.md.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def coverage(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, label in (("xiyouji_1-17.txt", "Journey to the West, ch. 1-17"), ("shakespeare.txt", "Tiny Shakespeare")):
        counts = sorted(Counter((ROOT / "data" / name).read_text(encoding="utf-8")).values(), reverse=True)
        total, running, shares = sum(counts), 0, []
        for n in counts:
            running += n
            shares.append(running / total)
        ax.plot(range(1, len(shares) + 1), shares, label=f"{label} ({len(counts):,} characters)")
    ax.set_xscale("log")
    ax.set_xlabel("k most frequent characters kept")
    ax.set_ylabel("share of the text covered")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    _save(fig, out)


def memory_traffic(out: Path, d: int = 64, elem: int = 2, block_m: int = 128) -> None:
    ts = [2**i for i in range(9, 17)]
    naive = [4 * t * d * elem + 4 * t * t * elem for t in ts]  # q, k, v, o + write S, read S, write P, read P
    flash = [2 * t * d * elem + 2 * t * d * elem * math.ceil(t / block_m) for t in ts]  # q, o + k, v per q tile
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(ts, [b / 2**20 for b in naive], "o-", label="naive: S and P through HBM")
    ax.plot(ts, [b / 2**20 for b in flash], "s-", label=f"flash: k, v re-read per {block_m}-row query tile")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T (characters)")
    ax.set_ylabel("MiB moved per (batch, head), forward")
    ax.set_title(f"D = {d}, fp16, no cache hits", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out)


def label_efficiency(out: Path) -> None:
    rows = json.loads((ROOT / "bench/results/peft_compare_cws.json").read_text(encoding="utf-8"))["label_efficiency"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for init in ("pretrained", "scratch"):
        points = sorted((r["train_examples"], 100 * r["test"]) for r in rows if r["init"] == init)
        ax.plot(*zip(*points), "o-", label=f"{init} (masked-LM encoder)" if init == "pretrained" else "from scratch")
    ax.set_xscale("log")
    ax.set_xlabel("labelled training sentences (CTB6)")
    ax.set_ylabel("test word F1")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out)


def _save(fig, out: Path) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    coverage(HERE / "coverage.png")
    memory_traffic(HERE / "memory_traffic.png")
    label_efficiency(HERE / "label_efficiency.png")
