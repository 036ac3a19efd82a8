"""Benchmarks: each module is a script (python -m bench.NAME, or charformer bench NAME) writing JSON to out/
unless told where; results kept on purpose are committed to bench/results/."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The folder of the public data sets: ``$CHARFORMER_DATA``, else ``shared/data`` beside the repository."""
    return Path(os.environ.get("CHARFORMER_DATA") or ROOT.parent / "shared" / "data")
