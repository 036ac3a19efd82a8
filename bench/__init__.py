"""Benchmarks: each module is a script (python -m bench.NAME, or charformer bench NAME) writing JSON to out/
unless told where; results kept on purpose are committed to bench/results/."""

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The folder of the public data sets: ``$CHARFORMER_DATA``, else ``shared/data`` beside the repository."""
    return Path(os.environ.get("CHARFORMER_DATA") or ROOT.parent / "shared" / "data")


def write_json_results(results: dict, out: Path, copy_to: str = "") -> None:
    """`results` as OUT/results.json (indented, UTF-8 as is), and the same text at `copy_to` when given
    (a bench's --results FILE, e.g. under bench/results/)."""
    text = json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    (out / "results.json").write_text(text, encoding="utf-8")
    if copy_to:
        Path(copy_to).write_text(text, encoding="utf-8")
