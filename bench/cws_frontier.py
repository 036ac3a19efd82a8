"""The F1/speed frontier of word segmentation, as a PNG: chars/s at one thread (x, log scale) against word F1
(y) on one corpus, for every row of a `bench/cws_peers.py` result (jieba, THULAC and each variant of ours:
checkpoint, precision, batch size), each point labelled.

    python -m bench.cws_peers --ckpt plain=out/ctb6_cws --ckpt student=out/ctb6_student --precision fp32,int8
    python -m bench.cws_frontier --json out/cws_peers.json --corpus ctb6 --out out/cws_frontier.png

The line joins the Pareto frontier: the rows that no other row beats on both speed and F1 (Pareto 1896; a row
off the line is dominated, something else is at least as fast and at least as accurate). The dotted vertical
line is THULAC's speed on the same corpus, measured in the same rounds. Speeds from one run of cws_peers
compare with each other; across runs, machine load moves them all.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from bench import ROOT
from charformer.errors import CharformerError, run_cli


def pareto_frontier(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(speed, f1)`` that no other point dominates (at least as high on both, higher
    on one), sorted by speed."""
    def dominated(i: int) -> bool:
        x, y = points[i]
        return any(a >= x and b >= y and (a, b) != (x, y) for a, b in points)

    return sorted((i for i in range(len(points)) if not dominated(i)), key=lambda i: points[i][0])


def corpus_rows(result: dict, corpus: str, source: str) -> list[dict]:
    """The rows of `result` (a cws_peers JSON) on `corpus`. Raises CharformerError when there are none."""
    rows = [r for r in result.get("rows", []) if r.get("corpus") == corpus]
    if not rows:
        found = sorted({r.get("corpus") for r in result.get("rows", [])})
        raise CharformerError(f"{source}: no row for corpus {corpus!r} (corpora: {', '.join(map(str, found))})")
    return rows


def plot_frontier(rows: list[dict], corpus: str, out: Path, command: str) -> None:
    """Write the frontier PNG of `rows` (cws_peers rows of one corpus) to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["chars_per_s"], r["f1"]) for r in rows]
    fig = plt.figure(figsize=(12, 6))
    ax = fig.add_axes((0.07, 0.17, 0.55, 0.73))
    # Points are numbered and named in a list beside the plot: variants of one model share an F1, so names
    # written next to the points would overlap.
    key = []
    for n, (r, (x, y)) in enumerate(zip(rows, points), 1):
        ours = "label" in r
        ax.scatter(x, y, marker="o" if ours else "s", s=40, color="tab:blue" if ours else "tab:gray", zorder=3)
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4 + 8 * (n % 2)), fontsize=8)
        key.append(f"{n:>2}  {r['tool']:<28} F1 {r['f1']:5.2f}  {r['chars_per_s']:>9,} chars/s")
    fig.text(0.64, 0.9, "\n".join(key), family="monospace", fontsize=8, va="top")
    front = pareto_frontier(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="tab:orange", lw=1.5,
            label="Pareto frontier", zorder=2)
    thulac = [r["chars_per_s"] for r in rows if r["tool"] == "thulac"]
    if thulac:
        ax.axvline(thulac[0], color="tab:gray", ls=":", lw=1, label="THULAC's chars/s")
    ax.set_xscale("log")
    ax.set_xlabel("characters per second, one thread (log scale)")
    ax.set_ylabel(f"word F1 on {corpus} (%)")
    ax.set_title(f"Word segmentation on {corpus}: F1 against speed (squares: peers, circles: ours)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(command, 160)), family="monospace", fontsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=str(ROOT / "out" / "cws_peers.json"), help="a bench/cws_peers.py result")
    p.add_argument("--corpus", default="ctb6", help="the corpus whose rows are plotted")
    p.add_argument("--out", default=str(ROOT / "out" / "cws_frontier.png"), help="the PNG written")
    args = p.parse_args(argv)
    try:
        result = json.loads(Path(args.json).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CharformerError(f"{args.json}: not a readable cws_peers JSON ({e})") from None
    rows = corpus_rows(result, args.corpus, args.json)
    plot_frontier(rows, args.corpus, Path(args.out), result.get("command", ""))
    front = pareto_frontier([(r["chars_per_s"], r["f1"]) for r in rows])
    print(f"{args.out}: {len(rows)} rows on {args.corpus}; frontier: {', '.join(rows[i]['tool'] for i in front)}")


if __name__ == "__main__":
    run_cli(main)
