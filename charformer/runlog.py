"""Run logs: ``metrics.jsonl`` (one JSON record per logged step, the run's record), the curves PNG drawn from
it, and optionally TensorBoard event files of the same records.

Periodic validation during training may score only the first batches of the validation text (an estimate on
a subset, cheap enough to run often); the scripts score the whole split once at the end. The plot says which
is which: the periodic curve is labelled with how many characters it scored, and the final full-split figure,
when given, is drawn beside it as one marked point.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from .errors import CharformerError  # noqa: E402


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
        return read_metrics(self.path) if self.path.exists() else []


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class RunLog:
    """What `charformer.train.fit` writes in `out_dir` as it goes: ``metrics.jsonl``, ``curves.png`` and, with
    `tensorboard`, event files in ``out_dir/tensorboard`` (every numeric field of a record is a scalar at its
    step). Raises CharformerError for `tensorboard` without the tensorboard package."""

    def __init__(self, out_dir: Path, *, title: str, resume_step: int | None, tensorboard: bool = False):
        self.metrics = MetricsLog(out_dir / "metrics.jsonl", resume_step=resume_step)
        self.png, self.title, self.writer = out_dir / "curves.png", title, None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise CharformerError("--tensorboard needs the tensorboard package: pip install tensorboard "
                                      "(or charformer[tensorboard])") from None
            # purge_step drops events after the resumed step, as MetricsLog drops records
            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=None if resume_step is None else
                                        resume_step + 1)

    def write(self, record: dict) -> None:
        self.metrics.write(record)
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])

    def plot(self) -> None:
        plot_curves(self.metrics.records(), self.png, title=self.title)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _series(records: list[dict]) -> dict[str, tuple[list, list]]:
    """Every finite numeric ``train_*`` / ``val_*`` / ``dev_*`` field as (steps, values)."""
    series: dict[str, tuple[list, list]] = {}
    for r in records:
        for key, value in r.items():
            if key.startswith(("train_", "val_", "dev_")) and isinstance(value, (int, float)) and math.isfinite(value):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(r["step"])
                ys.append(value)
    return series


def plot_curves(records: list[dict], png_path: str | Path, title: str = "", final: dict | None = None) -> dict[str, list[str]]:
    """Plot the ``train_*`` / ``val_*`` series against step: losses (nats) together in the first panel, every
    other metric (accuracy, F1, bits/char) in a panel of its own. A series that never changes is left out (it
    says nothing about training); so are ``*_chars`` counts, which instead label the validation curves with how
    many characters each evaluation scored. `final` (e.g. ``{"val_loss": ..., "val_chars": ...}``, the whole
    validation split scored after training) is drawn as one marked point at the last step. Returns the panels
    drawn, each with the labels of its lines (``{"loss": ["train_loss", ...], "val_bpc": [...]}``)."""
    series = _series(records)
    chars = {k.removesuffix("_chars"): int(ys[-1]) for k, (_, ys) in series.items() if k.endswith("_chars")}
    shown = {k: v for k, v in series.items() if not k.endswith("_chars") and (len(set(v[1])) > 1 or len(v[1]) == 1)}
    losses = {k: v for k, v in shown.items() if k.endswith("loss")}
    others = {k: v for k, v in shown.items() if not k.endswith("loss")}
    fig, axes = plt.subplots(1, 1 + len(others), figsize=(5 * (1 + len(others)), 3.6), squeeze=False)
    panels = {"loss": axes[0, 0], **dict(zip(others, axes[0, 1:]))}
    for k, (xs, ys) in {**losses, **others}.items():
        ax = panels["loss" if k in losses else k]
        ax.plot(xs, ys, label=_label(k, chars, final or {}),
                marker="o" if len(xs) < 30 or k not in losses else None, markersize=3)
    last_step = max((xs[-1] for xs, _ in series.values()), default=0)
    for k, value in (final or {}).items():
        ax = panels["loss"] if k.endswith("loss") else panels.get(k)
        if ax is not None and not k.endswith("_chars"):
            n = final.get(f"{k.split('_')[0]}_chars")
            ax.plot([last_step], [value], marker="*", markersize=12, linestyle="none",
                    label=f"{k}, whole split after training" + (f" ({n:,} chars)" if n else ""))
    axes[0, 0].set_ylabel("loss (nats)")
    for k, ax in panels.items():
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if k != "loss":
            ax.set_title(_label(k, chars, final or {}), fontsize=9)
        if ax.get_legend_handles_labels()[0] and (k == "loss" or len(ax.get_lines()) > 1):
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return {k: [line.get_label() for line in ax.get_lines()] for k, ax in panels.items()}


def _label(key: str, chars: dict[str, int], final: dict) -> str:
    """`key`, and for a periodic validation series the size of the sample each evaluation scored: a subset
    estimate unless the final whole-split figure scored no more."""
    prefix = key.split("_")[0]
    if prefix not in chars:
        return key
    whole = final.get(f"{prefix}_chars")
    if whole is not None and whole <= chars[prefix]:
        return f"{key} (periodic, on all {chars[prefix]:,} chars)"
    return f"{key} (periodic estimate on {chars[prefix]:,} chars)"
