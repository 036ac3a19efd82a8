"""bench.continual on tiny data: task B's files are the corpora's first sentences, words joined; task A is learned
once; every row learns B from A's checkpoint with its own flags and reads A's test set before and after. And
bench.peft_compare's rows against forgetting of a language model (rehearsal, EWC) on its quick setting."""

import json
import random

import pretrain
from bench import continual, peft_compare
from charformer.tasks.readers import read_cws, read_labeled
from tests.helpers import cls_text, cws_text
from tests.test_finetune_cli import TINY


def test_rows_learn_b_from_a_and_score_a_before_and_after(tmp_path, monkeypatch):
    rng, data = random.Random(0), tmp_path / "data"
    for split, n in (("train", 24), ("dev", 6), ("test", 6)):
        (data / "sentiment" / "chnsenticorp").mkdir(parents=True, exist_ok=True)
        (data / "sentiment" / "chnsenticorp" / f"{split}.tsv").write_text(cls_text(rng, n), encoding="utf-8")
        for corpus in continual.DOMAINS.values():
            (data / corpus).mkdir(parents=True, exist_ok=True)
            (data / corpus / f"{split}.txt").write_text(cws_text(rng, n), encoding="utf-8")
    monkeypatch.setenv("CHARFORMER_DATA", str(data))
    raw = tmp_path / "raw.txt"
    raw.write_text(cws_text(rng, 40).replace(" ", "") + "房间很好喜欢干净很差讨厌失望\n" * 20, encoding="utf-8")
    body = tmp_path / "mlm"
    assert pretrain.main(["--data", str(raw), "--out", str(body), "--objective", "mlm", "--max-steps", "4",
                          *TINY[:10]]) == 0
    out = tmp_path / "cl"
    assert continual.main(["--init", str(body), "--out", str(out), "--ewc", "1e3", "--rehearsal", "0.25",
                           "--combo", "1e3,0.25", "--steps-a", "6", "--max-steps", "4", "--evals", "1",
                           "--batch-size", "4", "--warmup-steps", "1", "--domain-train", "5",
                           "--domain-eval", "3"]) == 0
    train = read_labeled(out / "data" / "train.tsv")
    assert [d.label for d in train] == ["news"] * 5 + ["wikipedia"] * 5 + ["novel"] * 5
    assert [d.text for d in train[5:10]] == [s.text for s in read_cws(data / "cws/udc/train.txt")[:5]]
    results = json.loads((out / "results.json").read_text())
    a = json.loads((out / "runs" / "a_senti" / "results.json").read_text())
    assert a["steps"] == 6 and results["a_after_a"]["test_accuracy"] == a["test_after"]["accuracy"]
    names = ["plain", "ewc 1e3", "rehearsal 0.25", "ewc 1e3 + rehearsal 0.25"]
    assert [r["method"] for r in results["rows"]] == names
    for r, run in zip(results["rows"], ("plain", "ewc_1e3", "rehearsal_0.25", "ewc_1e3_rehearsal_0.25")):
        ran = json.loads((out / "runs" / f"b_{run}" / "results.json").read_text())
        assert ran["init"] == str(out / "runs" / "a_senti" / "best") and ran["steps"] == 4
        assert r["a_test_accuracy_before"] == a["test_after"]["accuracy"]  # A's head, read on A's own body
        assert r["a_test_accuracy_after"] == ran["original_after"]["accuracy"]
        assert r["b_test_accuracy"] == ran["test_after"]["accuracy"]
        assert ran["toolbox"]["ewc"] == (1000.0 if "ewc" in run else 0.0)
        assert ran["previous_task"]["rehearsal_rows_per_batch"] == (1 if "rehearsal" in run else 0)


def test_peft_compare_adds_rehearsal_and_ewc_rows_for_the_language_model(tmp_path):
    out = tmp_path / "pc"
    rng, data = random.Random(1), tmp_path / "data"
    for folder, ext, make in (("cws/ctb6", "txt", cws_text), ("sentiment/chnsenticorp", "tsv", cls_text)):
        (data / folder).mkdir(parents=True)
        for split in ("train", "dev", "test"):
            (data / folder / f"{split}.{ext}").write_text(make(rng, 20), encoding="utf-8")
    (data / "zh_text").mkdir()
    (data / "zh_text" / "hongloumeng.txt").write_text(cws_text(rng, 400).replace(" ", ""), encoding="utf-8")
    assert peft_compare.main(["--quick", "--tasks", "lm", "--methods", "full", "--ewc", "1e3,1e5", "--data-dir",
                              str(tmp_path / "data"), "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["full", "full + rehearsal 0.25", "full + EWC 1e3", "full + EWC 1e5"]
    for name, lam in (("lm_full_ewc1e3", 1e3), ("lm_full_ewc1e5", 1e5)):
        ran = json.loads((out / "runs" / name / "results.json").read_text())
        assert ran["toolbox"]["ewc"] == lam and ran["toolbox"]["ewc_data"].endswith("rehearsal.txt")
