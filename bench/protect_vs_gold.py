"""How often each corpus's gold segmentation cuts inside a run that `charformer.segment` protects by default
(numbers, Latin words, URLs, e-mail addresses: `charformer.tasks.constraints.protected_spans`).

    python -m bench.protect_vs_gold

A protected run is never cut by our decoder, so where a standard does cut one, protection costs that word
(and its neighbours) whatever the model would have said: the counts here bound what ``--no-protect`` can win
back on each corpus. The text is rebuilt from the gold words without separators, as bench/cws_peers.py feeds
the segmenters, so Latin words that a raw text would separate by spaces run together here ("at the end"
becomes "attheend"): the counts are an upper bound for text that keeps its spaces.

Output: a table on stdout and JSON (--out, default out/protect_vs_gold.json) with the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from bench import ROOT, data_dir
from charformer.tasks.constraints import protected_spans
from charformer.tasks.readers import read_cws


def count(path: Path, n_examples: int = 5) -> dict:
    """Protected runs in the sentences of a gold file, how many the gold cuts inside, and a few of those."""
    runs = cut = words = 0
    examples = []
    for sentence in read_cws(path):
        starts = {s for s, _, _ in sentence.spans}
        words += len(sentence.spans)
        for s, e in protected_spans(sentence.text):
            runs += 1
            if starts & set(range(s + 1, e)):
                cut += 1
                if len(examples) < n_examples:
                    examples.append(" ".join(sentence.text[a:b] for a, b, _ in sentence.spans if a < e and b > s))
    return {"file": str(path), "gold_words": words, "protected_runs": runs, "cut_by_gold": cut, "examples": examples}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(data_dir() / "cws"), help="folder of CWS corpora")
    p.add_argument("--corpora", default="ctb6,udc,weibo,zx", help="comma-separated corpus folders under --data")
    p.add_argument("--out", default=str(ROOT / "out" / "protect_vs_gold.json"))
    args = p.parse_args(argv)
    rows = {}
    for name in args.corpora.split(","):
        folder = Path(args.data) / name
        rows[name] = count(folder / "test.txt" if (folder / "test.txt").exists() else folder / "dev.txt")
        r = rows[name]
        print(f"{name:6} {r['protected_runs']:5} protected runs, {r['cut_by_gold']:4} cut by the gold "
              f"({r['gold_words']:,} words)  e.g. {' | '.join(r['examples'][:3])}")
    report = {"command": "python -m bench.protect_vs_gold " + " ".join(sys.argv[1:]), "corpora": rows}
    Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
