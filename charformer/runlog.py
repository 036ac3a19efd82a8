"""Run logs: ``metrics.jsonl`` (one JSON record per logged step) and the loss-curve PNG drawn from it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


class MetricsLog:
    """Append-only ``metrics.jsonl``. On resume, records after the resumed step are dropped so the file
    describes one continuous run."""

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [r for r in self.records() if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict], png_path: str | Path, title: str = "") -> None:
    """Plot every ``train_*`` / ``val_*`` numeric series against step: losses on the left axis, other
    metrics (accuracy, F1, bits/char) each in their own panel."""
    series: dict[str, tuple[list, list]] = {}
    for r in records:
        for key, value in r.items():
            if key.startswith(("train_", "val_", "dev_")) and isinstance(value, (int, float)) and math.isfinite(value):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(r["step"])
                ys.append(value)
    losses = {k: v for k, v in series.items() if k.endswith("loss")}
    others = {k: v for k, v in series.items() if not k.endswith("loss")}
    n_panels = 1 + len(others)
    fig, axes = plt.subplots(1, n_panels, figsize=(5 * n_panels, 3.6), squeeze=False)
    ax = axes[0, 0]
    for k, (xs, ys) in losses.items():
        ax.plot(xs, ys, label=k, marker="o" if len(xs) < 30 else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    for ax, (k, (xs, ys)) in zip(axes[0, 1:], others.items()):
        ax.plot(xs, ys, marker="o", markersize=3)
        ax.set_xlabel("step")
        ax.set_title(k)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
