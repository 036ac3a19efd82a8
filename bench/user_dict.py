"""Cost of a large user dictionary: reading it, and the constraints it puts on each sentence.

    python -m bench.user_dict                 # a 100,000-word dictionary, CTB6 test sentences

The dictionary is every word of the shared CWS training corpora (CTB6, UD, Weibo, Zhuxian), topped up to --words
with pairs of adjacent words from them (compounds, as users add), written as a file and read by `read_lexicon`.
Timed in CPU time of this one-thread process (``time.process_time``, so that other processes on a shared
machine do not count; median of --repeats): reading the file; `Lexicon.matches` (leftmost-longest scan of the
trie) and `lattice_bias` in force mode with protection on, over the sentences of --test, in characters per
second. The figure to compare with is the segmenter's own speed (bench/cws_peers.py, bench/inference.py):
the constraints should cost a small fraction of it.

Output: a table on stdout and JSON (--out, default out/user_dict.json) with the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


from bench import ROOT, data_dir
from charformer.tasks.constraints import lattice_bias
from charformer.tasks.lexicon import read_lexicon
from charformer.tasks.readers import read_cws
from charformer.tasks.schemes import spans_to_words

DATA = data_dir() / "cws"


def dictionary_words(n: int) -> list[str]:
    """`n` distinct words: the training words of every corpus, then adjacent pairs of them."""
    words: dict[str, None] = {}
    pairs: dict[str, None] = {}
    for corpus in ("ctb6", "udc", "weibo", "zx"):
        for sentence in read_cws(DATA / corpus / "train.txt"):
            # as a dictionary line can hold them: no TAB, no space at either end
            tokens = [w for w in spans_to_words(sentence.text, sentence.spans) if w == w.strip() and "\t" not in w]
            words.update(dict.fromkeys(tokens))
            pairs.update(dict.fromkeys(a + b for a, b in zip(tokens, tokens[1:])))
    ordered = list(words) + [p for p in pairs if p not in words]
    if len(ordered) < n:
        raise SystemExit(f"only {len(ordered)} words available")
    return ordered[:n]


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--words", type=int, default=100_000, help="dictionary size")
    p.add_argument("--test", default=str(DATA / "ctb6" / "test.txt"), help="segmented file whose text is scanned")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--work", default=str(ROOT / "out" / "user_dict"))
    p.add_argument("--out", default=str(ROOT / "out" / "user_dict.json"))
    args = p.parse_args(argv)
    path = Path(args.work) / f"dict_{args.words}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    escaped = ("\\" + w if w.startswith("#") else w for w in dictionary_words(args.words))  # not a comment
    path.write_text("".join(w + "\n" for w in escaped), encoding="utf-8")
    texts = [s.text for s in read_cws(args.test)]
    chars = sum(map(len, texts))
    lexicon = read_lexicon(path)
    read_s = median_seconds(lambda: read_lexicon(path), args.repeats)
    match_s = median_seconds(lambda: [lexicon.matches(t) for t in texts], args.repeats)
    bias_s = median_seconds(lambda: [lattice_bias(t, lexicon=lexicon) for t in texts], args.repeats)
    n_matches = sum(len(lexicon.matches(t)) for t in texts)
    result = {"command": "python -m bench.user_dict " + " ".join(sys.argv[1:]), "words": len(lexicon),
              "test": args.test, "sentences": len(texts), "chars": chars, "matches": n_matches,
              "read_seconds": round(read_s, 3), "match_chars_per_s": round(chars / match_s),
              "match_and_bias_chars_per_s": round(chars / bias_s)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{len(lexicon):,} words read in {read_s:.2f} s; {chars:,} characters, {n_matches:,} matches: "
          f"matching {chars / match_s:,.0f} chars/s, matching + lattice bias {chars / bias_s:,.0f} chars/s")


if __name__ == "__main__":
    main()
