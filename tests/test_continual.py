"""Classification tasks learned one after another (charformer.finetuning.continual): rehearsal batches and their
loss by hand, EWC's Fisher information of the earlier task by hand, and finetune.py --init CLASSIFIER end to end
(the earlier task scored with its own head before and after, EWC holding the body, the errors)."""

import json
import random

import pytest
import torch
import torch.nn.functional as F

import finetune
import pretrain
from charformer.errors import CharformerError
from charformer.finetuning.continual import PreviousTask, Rehearsal, load_previous_task, previous_task_losses
from charformer.finetuning.ewc import fisher_diagonal
from charformer.objectives import rehearsal_rows
from charformer.tasks.checkpoint import load_task_checkpoint
from charformer.tasks.heads import Classifier, SequenceClassificationHead
from charformer.tasks.objectives import ClassificationObjective
from charformer.tasks.predict import chunk_batch
from charformer.tasks.readers import Document
from charformer.vocab import CharVocab
from tests.helpers import tiny_model, write_task_files
from tests.test_finetune_cli import TINY

OLD_TASK = {"task": "classify", "labels": ["0", "1"], "pooling": "mean", "head_dropout": 0.0}
NEW_TASK = {"task": "classify", "labels": ["a", "b", "c"], "pooling": "mean", "head_dropout": 0.0}


def _docs(rng, labels, n):
    return [Document("".join(rng.choice("房间很好差喜欢讨厌中国人民北京") for _ in range(rng.randint(3, 40))),
                     rng.choice(labels), f"f:{i}") for i in range(n)]


def _setup(rows: int, batch_size: int = 6):
    rng = random.Random(0)
    old_docs, new_docs = _docs(rng, OLD_TASK["labels"], 10), _docs(rng, NEW_TASK["labels"], 10)
    vocab = CharVocab.build(d.text for d in old_docs + new_docs)
    body = tiny_model(vocab_size=len(vocab), block_size=16)
    torch.manual_seed(1)
    old_head = SequenceClassificationHead(32, OLD_TASK["labels"], dropout=0.0).requires_grad_(False)
    previous = PreviousTask("A", old_head, OLD_TASK)
    model = Classifier(body, SequenceClassificationHead(32, NEW_TASK["labels"], dropout=0.0))
    sizes = {"block_size": 16, "eval_batch_size": 4}
    new = ClassificationObjective(NEW_TASK, new_docs, [], vocab, batch_size=batch_size - rows, **sizes)
    old = ClassificationObjective(OLD_TASK, old_docs, [], vocab, batch_size=rows, **sizes)
    return model, previous, new, old


def test_rehearsal_batches_mix_the_tasks_and_score_each_with_its_own_head():
    assert [rehearsal_rows(s, 8) for s in (0.0, 0.01, 0.25, 0.99)] == [0, 1, 2, 7]
    with pytest.raises(ValueError, match="batch_size >= 2"):
        rehearsal_rows(0.5, 1)
    model, previous, new, old = _setup(rows=2)
    objective = Rehearsal(new, old, previous)
    ids, lengths, labels, is_old = objective.batch(torch.Generator().manual_seed(0))
    assert ids.shape[0] == 6 and is_old.tolist() == [False] * 4 + [True] * 2  # old rows last
    assert labels[is_old].max() < 2 and objective.metric == "accuracy" and objective.n_train == 10
    loss, chars = objective.loss(model, (ids, lengths, labels, is_old))
    with torch.no_grad():
        ce_new = F.cross_entropy(model(ids[:4], lengths[:4]), labels[:4], reduction="sum")
        ce_old = F.cross_entropy(Classifier(model.body, previous.head)(ids[4:], lengths[4:]), labels[4:],
                                 reduction="sum")
    assert loss.item() == pytest.approx((ce_new + ce_old).item() / 6, rel=1e-5)
    assert chars == int((lengths - (lengths > 0).long()).sum())
    loss.backward()  # the old rows train the body through the frozen old head, which itself stays untouched
    assert previous.head.proj.weight.grad is None and model.body.tok_emb.weight.grad.abs().sum() > 0


def test_ewc_fisher_is_the_earlier_tasks_squared_gradient_through_its_head():
    model, previous, _, old = _setup(rows=3)
    params = {n: p for n, p in model.named_parameters()}
    fisher = fisher_diagonal(params, previous_task_losses(previous, model.body, old, n_batches=3, seed=5))
    gen, by_hand = torch.Generator().manual_seed(5), {n: torch.zeros_like(p) for n, p in params.items()}
    for _ in range(3):
        ids, lengths, labels = old.batch(gen)
        model.zero_grad()
        F.cross_entropy(Classifier(model.body, previous.head)(ids, lengths), labels).backward()
        for n, p in params.items():
            if p.grad is not None:
                by_hand[n] += p.grad ** 2 / 3
    assert fisher["body.tok_emb.weight"].sum() > 0
    for n in params:
        torch.testing.assert_close(fisher[n], by_hand[n], rtol=1e-4, atol=1e-10)
    assert fisher["head.proj.weight"].abs().sum() == 0  # the new task's head plays no part in the old task's loss


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """A classifier fine-tuned on the rooms task (task A), and the files of a second task (B)."""
    root = tmp_path_factory.mktemp("continual")
    files = write_task_files(root, n_train=24, n_eval=8, tasks=("classify",))
    rng = random.Random(3)
    for split, n in (("train", 24), ("dev", 8), ("test", 8)):
        rows = ["label\ttext_a"] + [f"{k}\t" + "".join(rng.choice("房间很") for _ in range(rng.randint(2, 9)))
                                    + "净望欢"[k] for k in (rng.randint(0, 2) for _ in range(n))]
        (root / f"b_{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        files["b", split] = str(root / f"b_{split}.tsv")
    out = root / "a"
    assert finetune.main(["--task", "classify", "--train", files["classify", "train"], "--dev", files["classify", "dev"],
                          "--test", files["classify", "test"], "--init", "scratch", "--out", str(out), *TINY,
                          "--max-steps", "8"]) == 0  # short: a task learned to zero loss has ~zero Fisher information
    return files, out


def _second(files, a, out, *extra):
    return finetune.main(["--task", "classify", "--train", files["b", "train"], "--dev", files["b", "dev"], "--test",
                          files["b", "test"], "--init", str(a / "best"), "--out", str(out), *TINY[6:],
                          "--max-steps", "20", "--lr", "1e-2", "--weight-decay", "0",
                          "--original-val", files["classify", "test"], *extra])


def _earlier_task_loss(a, out, path):
    """Mean cross-entropy (nats) of task A's training texts, read by A's head on the body of OUT/best."""
    previous, _ = load_previous_task(str(a / "best"), {})
    model, vocab, _ = load_task_checkpoint(out / "best")
    docs = previous.documents(path)
    objective = ClassificationObjective(previous.task, docs, [], vocab, block_size=16, batch_size=len(docs),
                                        eval_batch_size=8)
    ids, lengths = chunk_batch(objective.train_ids, 16)
    with torch.no_grad():
        return F.cross_entropy(previous.model(model.body)(ids, lengths), torch.tensor(objective.train_labels)).item()


def test_a_second_task_scores_the_first_with_its_head_and_ewc_holds_the_body(earlier, tmp_path):
    files, a = earlier
    first = json.loads((a / "results.json").read_text())
    losses = {"before": _earlier_task_loss(a, a, files["classify", "train"])}
    for name, extra in (("plain", ()), ("ewc", ("--ewc", "1e6", "--ewc-data", files["classify", "train"])),
                        ("rehearsal", ("--rehearsal-data", files["classify", "train"], "--rehearsal-share", "0.25"))):
        out = tmp_path / name
        assert _second(files, a, out, *extra) == 0
        results = json.loads((out / "results.json").read_text())
        # before training on B, the first task is read exactly as its own run scored it
        assert results["original_before"]["accuracy"] == first["test_after"]["accuracy"]
        assert results["head"]["labels"] == ["0", "1", "2"] and results["previous_task"]["labels"] == ["0", "1"]
        assert results["previous_task"]["rehearsal_rows_per_batch"] == (2 if name == "rehearsal" else 0)
        assert 0 <= results["original_after"]["accuracy"] <= 1
        losses[name] = _earlier_task_loss(a, out, files["classify", "train"])
    assert losses["plain"] > 10 * losses["before"]  # plain training on B forgets A
    assert losses["ewc"] < 0.5 * losses["plain"] and losses["rehearsal"] < 0.5 * losses["plain"]


def test_continuing_a_classifier_errors(earlier, tmp_path):
    files, a = earlier
    with pytest.raises(CharformerError, match=r"\(--method full\), not --method lora"):
        _second(files, a, tmp_path / "x1", "--method", "lora")
    with pytest.raises(CharformerError, match="is not one of the earlier classifier's"):
        _second(files, a, tmp_path / "x2", "--rehearsal-data", files["b", "train"])
    with pytest.raises(CharformerError, match="--original-val and --rehearsal-data are for --task lm"):
        finetune.main(["--task", "classify", "--train", files["b", "train"], "--dev", files["b", "dev"], "--test",
                       files["b", "test"], "--init", "scratch", "--out", str(tmp_path / "x3"), *TINY,
                       "--original-val", files["classify", "test"]])
    with pytest.raises(CharformerError, match="a fine-tuned task checkpoint; --init takes a pretrained one"):
        finetune.main(["--task", "cws", "--train", files["b", "train"], "--dev", files["b", "dev"], "--test",
                       files["b", "test"], "--init", str(a / "best"), "--out", str(tmp_path / "x4")])
    with pytest.raises(CharformerError, match="--rehearsal-share needs --rehearsal-data"):
        _second(files, a, tmp_path / "x5", "--rehearsal-share", "0.5")
    raw, mlm, lora = tmp_path / "raw.txt", tmp_path / "mlm", tmp_path / "lora"
    raw.write_text("房间很好喜欢干净很差讨厌失望。\n" * 20, encoding="utf-8")
    assert pretrain.main(["--data", str(raw), "--out", str(mlm), "--objective", "mlm", "--max-steps", "2",
                          *TINY[:10]]) == 0
    assert finetune.main(["--task", "classify", "--train", files["classify", "train"], "--dev", files["classify", "dev"],
                          "--test", files["classify", "test"], "--init", str(mlm), "--out", str(lora), *TINY[6:],
                          "--max-steps", "2", "--method", "lora"]) == 0
    with pytest.raises(CharformerError, match="an adapter; learning a task after another starts from a complete"):
        _second(files, lora, tmp_path / "x6")  # an adapter holds no whole body to continue
