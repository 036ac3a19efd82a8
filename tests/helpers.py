"""Small builders shared by the tests."""

import random
from pathlib import Path

import torch
import torch.nn.functional as F

from charformer.model import CharTransformer, ModelConfig
from charformer.runlog import read_metrics

# Model options of the scripts' end-to-end tests: one layer, two heads, d_model 32, so a run takes seconds.
TINY_MODEL = ["--n-layers", "1", "--n-heads", "2", "--d-model", "32"]


def tiny_model(**overrides) -> CharTransformer:
    """A 2-layer model small enough that a forward pass takes a millisecond on a CPU."""
    cfg = dict(vocab_size=50, block_size=32, n_layers=2, n_heads=2, d_model=32, dropout=0.0)
    cfg.update(overrides)
    torch.manual_seed(0)
    return CharTransformer(ModelConfig(**cfg)).eval()


def train_losses(out: Path) -> dict[int, float]:
    """The training loss of every logged step of the run in `out` (its metrics.jsonl), by step."""
    return {r["step"]: r["train_loss"] for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r}


def train_next_char(model: torch.nn.Module, x: torch.Tensor, *, steps: int, lr: float) -> list[float]:
    """Train the trainable parameters of `model` with AdamW on next-character prediction over ids `x` (B, T)
    for `steps` full-batch steps; returns each step's loss (nats/char) before its update."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------- tiny labelled files of the three task formats

WORDS = ["中国", "人民", "站", "起来", "了", "我们", "北京", "天安门", "，", "。", "ABC", "１２３"]
ENTITIES = [("张三", "NAME"), ("北京大学", "ORG"), ("经理", "TITLE"), ("男", "GENDER")]


def cws_text(rng, n):
    """`n` segmented sentences of WORDS, one per line."""
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) + "\n" for _ in range(n))


def ner_text(rng, n):
    """`n` BMES-tagged sentences ("char TAG" lines, a blank line between sentences) with ENTITIES in them."""
    sentences = []
    for _ in range(n):
        lines = []
        for _ in range(rng.randint(2, 5)):
            if rng.random() < 0.5:
                word, kind = rng.choice(ENTITIES)
                prefixes = ["S"] if len(word) == 1 else ["B"] + ["M"] * (len(word) - 2) + ["E"]
                lines += [f"{c} {p}-{kind}" for c, p in zip(word, prefixes)]
            else:
                lines += [f"{c} O" for c in rng.choice(["是", "在", "工作", "，"])]
        sentences.append("\n".join(lines) + "\n")
    return "\n".join(sentences)


def cls_text(rng, n):
    """A "label<TAB>text_a" file of `n` rooms described well (1) or badly (0)."""
    good, bad = ["很好", "喜欢", "干净"], ["很差", "讨厌", "失望"]
    rows = ["label\ttext_a"]
    for _ in range(n):
        label = rng.randint(0, 1)
        rows.append(f"{label}\t房间" + "".join(rng.choice(good if label else bad) for _ in range(rng.randint(1, 8))))
    return "\n".join(rows) + "\n"


TASK_FILES = {"cws": (cws_text, "txt"), "ner": (ner_text, "bmes"), "classify": (cls_text, "tsv")}


def write_task_files(root: Path, n_train: int, n_eval: int, tasks=("cws", "ner", "classify"),
                     rng: random.Random | None = None) -> dict:
    """train/dev/test files of each task in `tasks` under `root`, drawn from `rng` (default: seeded with 0);
    returns ``{(task, split): path as str}``."""
    rng = rng or random.Random(0)
    paths = {}
    for task in tasks:
        make, ext = TASK_FILES[task]
        for split, n in (("train", n_train), ("dev", n_eval), ("test", n_eval)):
            path = root / f"{task}_{split}.{ext}"
            path.write_text(make(rng, n), encoding="utf-8")
            paths[task, split] = str(path)
    return paths
