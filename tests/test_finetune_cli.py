"""finetune.py end to end for every task, and the prediction tools (segment, tag, classify) on its checkpoints:
outputs that keep every input character, exactly invertible segmentation, clear errors."""

import json

import pytest
from hypothesis import given, settings, strategies as st

import finetune
import pretrain
from charformer import classify, segment, tag
from charformer.errors import CharformerError
from charformer.segment import format_words, join_words
from tests.helpers import TINY_MODEL, WORDS, write_task_files

TINY = [*TINY_MODEL, "--block-size", "16", "--batch-size", "8",
        "--device", "cpu", "--log-interval", "5", "--lr", "3e-3", "--eval-interval", "1000"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_task_files(tmp_path_factory.mktemp("data"), n_train=40, n_eval=8)


def _run(files, task, out, *extra):
    return finetune.main(["--task", task, "--train", files[task, "train"], "--dev", files[task, "dev"],
                          "--test", files[task, "test"], "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def cws_model(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("cws")
    assert _run(files, "cws", out, "--init", "scratch", "--max-steps", "30") == 0
    return out


EXPECTED = {"cws": ("f1", "precision", "recall", "oov_recall", "iv_recall"), "ner": ("f1", "precision", "recall", "per_type"),
            "classify": ("accuracy", "macro_f1", "confusion")}


def _check_results(out, task):
    results = json.loads((out / "results.json").read_text())
    for key in ("test_before", "test_after", "trainable_params", "total_params", "wall_seconds", "steps"):
        assert key in results
    for when in ("test_before", "test_after"):
        assert set(EXPECTED[task]) <= set(results[when])
    return results


def test_finetune_cws_from_scratch(cws_model):
    results = _check_results(cws_model, "cws")
    assert results["test_after"]["f1"] > results["test_before"]["f1"]
    assert results["trainable_params"] == results["total_params"] and results["steps"] == 30


@pytest.mark.parametrize("task, extra", [("ner", ["--crf", "--epochs", "2"]),
                                         ("classify", ["--pooling", "cls", "--max-steps", "12"])])
def test_finetune_ner_and_classify(files, tmp_path, task, extra):
    assert _run(files, task, tmp_path, "--init", "scratch", *extra) == 0
    results = _check_results(tmp_path, task)
    if task == "ner":
        assert results["head"]["scheme"] == "BMES" and results["head"]["crf"] is True
        assert results["steps"] == 2 * -(-results["train_pieces"] // 8)  # 2 epochs of 8-sentence batches
        assert set(results["test_after"]["per_type"]) <= {"NAME", "ORG", "TITLE", "GENDER"}
    else:
        assert results["test_after"]["confusion"]["labels"] == ["0", "1"]


def test_finetune_from_a_pretrained_mlm_checkpoint_with_a_frozen_body(files, tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("".join(w for w in "我们在北京天安门\n中国人民站起来了\n" * 40), encoding="utf-8")  # no ABC, １２３
    pretrain.main(["--data", str(raw), "--out", str(tmp_path / "mlm"), "--objective", "mlm", "--max-steps", "5",
                   *TINY[:10]])
    out = tmp_path / "ft"
    assert _run(files, "cws", out, "--init", str(tmp_path / "mlm"), "--freeze", "body", "--max-steps", "5") == 0
    results = _check_results(out, "cws")
    assert results["trainable_params"] == 32 * 4 + 4  # the linear head alone
    assert results["model"]["causal"] is False
    with pytest.raises(CharformerError, match=r"the architecture comes from --init .*--d-model 64 \(checkpoint: 32\)"):
        _run(files, "cws", tmp_path / "clash", "--init", str(tmp_path / "mlm"), "--d-model", "64")


def test_finetune_errors(files, tmp_path):
    with pytest.raises(CharformerError, match="missing --test"):
        finetune.main(["--task", "cws", "--train", files["cws", "train"], "--dev", files["cws", "dev"],
                       "--init", "scratch", "--out", str(tmp_path / "a")])
    with pytest.raises(CharformerError, match="either --max-steps or --epochs"):
        _run(files, "cws", tmp_path / "b", "--init", "scratch", "--max-steps", "3", "--epochs", "1")
    bad = tmp_path / "bad.bmes"
    bad.write_text("张 B-NAME\n三\n", encoding="utf-8")
    with pytest.raises(CharformerError, match=r"bad.bmes:2: missing tag"):
        finetune.main(["--task", "ner", "--train", str(bad), "--dev", files["ner", "dev"], "--test", files["ner", "test"],
                       "--init", "scratch", "--out", str(tmp_path / "c")])
    with pytest.raises(CharformerError, match="no checkpoint here"):
        _run(files, "cws", tmp_path / "d", "--init", str(tmp_path / "nowhere"))
    assert not any((tmp_path / n).exists() for n in "abcd")


@settings(deadline=None)  # timing varies on a shared machine; the property does not
@given(st.lists(st.text(alphabet="中国 a1\u3000，", min_size=1, max_size=4), max_size=8))
def test_segmentation_output_is_exactly_invertible(words):
    line = format_words(words)
    assert join_words(line) == "".join(words)
    if words and " " not in "".join(words):
        assert line.split(" ") == words


def test_segment_tool_keeps_every_character(cws_model, tmp_path, capsysbinary):
    lines = ["中国人民站起来了", "", "我们　喜欢ＡＢＣ和abc，123与１２３！", "a b  c ", " 前后有空格 ",
             "天安门" * 12, "北京\u00a0大学"]  # the long line spans several 16-character windows
    text = "\n".join(lines[:3]) + "\r\n" + "\n".join(lines[3:])  # a CRLF line, and no final newline
    path = tmp_path / "in.txt"
    path.write_text(text, encoding="utf-8", newline="")
    assert segment.main(["--ckpt", str(cws_model), str(path), "--device", "cpu", "--batch-size", "3"]) == 0
    output = capsysbinary.readouterr().out.decode("utf-8")
    out_lines = output.split("\n")
    assert len(out_lines) == len(lines) and out_lines[2].endswith("\r") and out_lines[1] == ""
    for line, out in zip(lines, out_lines):
        out = out.removesuffix("\r")
        assert join_words(out) == line
        if " " not in line:
            assert out.replace(" ", "") == line
    (tmp_path / "seg.txt").write_bytes(output.encode("utf-8"))
    assert segment.main(["--ckpt", str(cws_model), "--join", str(tmp_path / "seg.txt")]) == 0
    assert capsysbinary.readouterr().out.decode("utf-8") == text


def test_tag_and_classify_tools(files, tmp_path, capsysbinary):
    ner, cls = tmp_path / "ner", tmp_path / "cls"
    _run(files, "ner", ner, "--init", "scratch", "--max-steps", "5")
    _run(files, "classify", cls, "--init", "scratch", "--max-steps", "5")
    path = tmp_path / "in.txt"
    path.write_text("张三是北京大学经理\n\n男\u3000ok\n", encoding="utf-8")
    capsysbinary.readouterr()
    tag.main(["--ckpt", str(ner), str(path), "--format", "jsonl"])
    records = [json.loads(line) for line in capsysbinary.readouterr().out.decode().splitlines()]
    assert [r["text"] for r in records] == ["张三是北京大学经理", "", "男\u3000ok"]
    for r in records:
        assert all(r["text"][e["start"]:e["end"]] == e["text"] for e in r["entities"])
    tag.main(["--ckpt", str(ner), str(path)])
    conll = capsysbinary.readouterr().out.decode()
    assert "".join(line.split("\t")[0] for line in conll.splitlines() if line) == "张三是北京大学经理男\u3000ok"
    classify.main(["--ckpt", str(cls), str(path), "--probs"])
    rows = capsysbinary.readouterr().out.decode().split("\n")
    assert rows[1] == "" and rows[0].split("\t")[2] == "张三是北京大学经理" and rows[0].split("\t")[0] in ("0", "1")
    with pytest.raises(CharformerError, match="a ner model; use python -m charformer.tag"):
        classify.main(["--ckpt", str(ner), str(path)])
