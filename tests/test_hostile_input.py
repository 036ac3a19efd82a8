"""Hostile and messy input (the corpus in tests/nasty/): every reader and every command-line tool gives either a
correct result, with every character kept, or one clear error ``FILE:LINE: ...`` (exit status 2), never a
traceback. The rules they share (strict UTF-8, a leading BOM dropped, lines ending at LF, CRLF or a lone CR) are
stated in `charformer.data`; the property tests at the end check the round trips on generated Unicode."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

import finetune
import pretrain
from charformer import classify, sample, segment, tag
from charformer.data import read_corpus, read_text, split_lines
from charformer.errors import CharformerError
from charformer.segment import format_words, join_words
from charformer.tasks.tool import read_lines
from charformer.tasks.checkpoint import load_task_checkpoint
from charformer.tasks.predict import tag_texts
from charformer.tasks.readers import read_conll, read_cws, read_labeled
from charformer.tasks.schemes import SCHEMES, spans_to_tags, spans_to_words
from charformer.vocab import CharVocab
from tests.nasty import make_nasty
from tests.helpers import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
NASTY = ROOT / "tests" / "nasty"
SEGMENTED = sorted(make_nasty.SEGMENTED)
TINY = [*TINY_MODEL, "--block-size", "16", "--batch-size", "4",
        "--device", "cpu", "--log-interval", "1", "--max-steps", "2"]


def nasty(name: str) -> str:
    return str(NASTY / name)


def text_of(name: str) -> str:
    """A corpus file's text by the documented rules (UTF-8, leading BOM dropped), decoded independently."""
    return (NASTY / name).read_bytes().decode("utf-8").removeprefix("\ufeff")


def run_tool(main, argv: list[str]) -> bytes:
    """Run a command-line `main` in this process and return what it wrote to stdout."""
    buffer = io.BytesIO()
    with contextlib.redirect_stdout(io.TextIOWrapper(buffer, encoding="utf-8")), \
            contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
        sys.stdout.flush()
        return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ the corpus
def test_corpus_files_are_what_the_script_writes():
    expected = make_nasty.files()
    for name, data in expected.items():
        assert (NASTY / name).read_bytes() == data, f"{name}: run python tests/nasty/make_nasty.py"
    words = make_nasty.long_sentence()
    assert len("".join(words)) == 100_000 and " " not in "".join(words)


def test_line_endings_and_bom_policy(tmp_path):
    assert split_lines("a\r\nb\rc\nd\u2028e\x85f\x0cg\x0bh") == [
        ("a", "\r\n"), ("b", "\r"), ("c", "\n"), ("d\u2028e\x85f\x0cg\x0bh", "")]
    assert split_lines("") == [] and split_lines("\n") == [("", "\n")]
    assert split_lines("\r\r\n\n") == [("", "\r"), ("", "\r\n"), ("", "\n")]
    assert read_text(nasty("bom_crlf.txt")).startswith("中国")  # the BOM is not text
    inner = tmp_path / "inner_bom.txt"
    inner.write_bytes("\ufeffa\ufeffb\n".encode())  # after the start: an ordinary character (ZWNBSP)
    assert read_text(inner) == "a\ufeffb\n"


# ----------------------------------------------------------------------------------------------- the readers
@pytest.mark.parametrize("name, line, offset", [("latin1.txt", 2, 17), ("utf16.txt", 1, 0), ("truncated.txt", 2, 17)])
def test_every_reader_names_file_line_and_byte_offset_of_bad_utf8(name, line, offset):
    message = rf"^{re.escape(nasty(name))}:{line}: not valid UTF-8 at byte offset {offset} \(byte 0x[0-9a-f]{{2}}: "
    for read in (read_text, read_cws, read_conll, read_labeled, read_lines, lambda p: read_corpus([p])):
        with pytest.raises(CharformerError, match=message):
            read(nasty(name))
    with pytest.raises(CharformerError, match="UTF-16 byte-order mark"):
        read_text(nasty("utf16.txt"))


def test_segmented_files_are_read_with_every_character():
    words = lambda name: [spans_to_words(s.text, s.spans) for s in read_cws(nasty(name))]  # noqa: E731
    assert words("lone_cr.txt") == [["中国", "人民"], ["站", "起来", "了"], ["我们", "在", "北京"]]
    mixed = read_cws(nasty("mixed_endings.txt"))
    assert [s.text for s in mixed] == ["中国人民", "站起来", "了", "我们", "最后一行"]
    assert [s.where.rsplit(":", 1)[1] for s in mixed] == ["1", "2", "3", "4", "6"]  # line 5 is empty
    blank = read_cws(nasty("blank_lines.txt"))  # whitespace-only lines hold no sentence
    assert [s.text for s in blank] == ["中国人民", "了"] and blank[1].where.endswith(":8")
    assert words("unicode_spaces.txt")[0] == ["\u3000\u3000中国", "人民\u3000站", "起来"]
    for name in SEGMENTED:
        if name != "blank_lines.txt":
            kept = "".join(s.text for s in read_cws(nasty(name)))
            assert sorted(kept) == sorted(c for c in text_of(name) if c not in " \r\n"), name


def test_ner_files_with_odd_tokens_unseen_types_and_malformed_lines():
    train = read_conll(nasty("ner_train.bmes"))  # BOM, CRLF, U+3000 / astral / combining-mark tokens
    assert [s.text for s in train] == ["张三\u3000\U00020000", "\U0001f600北大\u0301"]
    assert train[0].spans == ((0, 2, "NAME"), (3, 4, "NAME")) and train[1].spans == ((1, 3, "ORG"),)
    assert [s.text for s in read_conll(nasty("ner_test.bmes"))] == ["王去京"]
    for name, message in [("ner_missing_tag.bmes", r":2: missing tag \(expected 'CHAR TAG', got '三'\)$"),
                          ("ner_extra_columns.bmes", r":2: 3 columns, expected 2"),
                          ("ner_combining.bmes", ":1: token 'e\u0301' is not one character: 2 code points \\(U\\+0065 U\\+0301\\)$")]:
        with pytest.raises(CharformerError, match=re.escape(nasty(name)) + message):
            read_conll(nasty(name))


def test_long_lines_give_short_errors(tmp_path):
    path = tmp_path / "long.bmes"
    path.write_text("".join(make_nasty.long_sentence()) + "\n", encoding="utf-8")
    with pytest.raises(CharformerError) as error:
        read_conll(path)
    assert str(error.value).startswith(f"{path}:1: missing tag") and len(str(error.value)) < 250
    assert "(100,000 characters)" in str(error.value)


def test_classification_file_keeps_texts_exactly():
    docs = read_labeled(nasty("cls_train.tsv"))
    assert [(d.label, d.text) for d in docs] == [("1", "房间\u3000很好\U0001f44d"), ("0", "很差\u2028失望\x07"),
                                                 ("1", '"干净"的 cafe\u0301'), ("0", "\U00020000讨厌")]
    assert [d.where.rsplit(":", 1)[1] for d in docs] == ["2", "3", "4", "5"]


# ----------------------------------------------------------------------------------- the training scripts
def long_line_file(tmp_path: Path) -> str:
    """A segmented file whose one line holds 100,000 characters (with CRLF)."""
    path = tmp_path / "long.txt"
    path.write_bytes((" ".join(make_nasty.long_sentence()) + "\r\n").encode("utf-8"))
    return str(path)


def test_pretrain_on_every_messy_file_keeps_every_character(tmp_path):
    files = [nasty(name) for name in SEGMENTED] + [long_line_file(tmp_path)]
    for fmt, expected in (("text", set(read_corpus(files))),
                          ("cws", {"\n", *(c for f in files for s in read_cws(f) for c in s.text)})):
        out = tmp_path / fmt
        assert pretrain.main(["--data", *files, "--val", nasty("bom_crlf.txt"), "--out", str(out), "--data-format", fmt,
                              "--objective", "mlm", "--packing", "lines", *TINY]) == 0
        vocab = CharVocab.load(out / "last" / "vocab.json")
        assert set(vocab.itos[7:]) == expected and "\ufeff" not in expected  # nothing dropped; BOMs are not text
    assert "\r" in set(read_corpus(files))  # raw text keeps its line endings as characters


def test_finetune_on_messy_files(tmp_path, capsys):
    for name in SEGMENTED:
        assert finetune.main(["--task", "cws", "--train", nasty(name), "--dev", nasty(name), "--test", nasty(name),
                              "--init", "scratch", "--out", str(tmp_path / name), *TINY]) == 0
    assert finetune.main(["--task", "cws", "--train", long_line_file(tmp_path), "--dev", nasty("astral.txt"), "--test",
                          nasty("astral.txt"), "--init", "scratch", "--out", str(tmp_path / "long"), *TINY]) == 0
    pieces = json.loads((tmp_path / "long" / "results.json").read_text())["train_pieces"]
    assert pieces >= 100_000 // 16  # the sentence was cut into block-sized pieces, none dropped
    assert finetune.main(["--task", "ner", "--train", nasty("ner_train.bmes"), "--dev", nasty("ner_dev.bmes"),
                          "--test", nasty("ner_test.bmes"), "--init", "scratch", "--out", str(tmp_path / "ner"), *TINY]) == 0
    loc = json.loads((tmp_path / "ner" / "results.json").read_text())["test_after"]["per_type"]["LOC"]
    assert loc["gold"] == 1 and loc["recall"] == 0.0  # a type never trained on counts as missed
    assert finetune.main(["--task", "classify", "--train", nasty("cls_train.tsv"), "--dev", nasty("cls_test.tsv"),
                          "--test", nasty("cls_test.tsv"), "--init", "scratch", "--out", str(tmp_path / "cls"), *TINY]) == 0
    assert "label absent from the training file" in capsys.readouterr().out
    after = json.loads((tmp_path / "cls" / "results.json").read_text())["test_after"]
    assert after["confusion"]["labels"] == ["0", "1", "2"] and after["accuracy"] <= 2 / 3
    with pytest.raises(CharformerError, match=re.escape(nasty("ner_missing_tag.bmes")) + ":2: missing tag"):
        finetune.main(["--task", "ner", "--train", nasty("ner_missing_tag.bmes"), "--dev", nasty("ner_dev.bmes"),
                       "--test", nasty("ner_test.bmes"), "--init", "scratch", "--out", str(tmp_path / "bad"), *TINY])
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def task_models(tmp_path_factory, tiny_segmenter):
    root = tmp_path_factory.mktemp("task_models")
    for task, train, test in (("ner", "ner_train.bmes", "ner_test.bmes"), ("classify", "cls_train.tsv", "cls_test.tsv")):
        with contextlib.redirect_stdout(io.StringIO()):
            finetune.main(["--task", task, "--train", nasty(train), "--dev", nasty(train), "--test", nasty(test),
                           "--init", "scratch", "--out", str(root / task), *TINY])
    with contextlib.redirect_stdout(io.StringIO()):
        pretrain.main(["--data", *(nasty(n) for n in SEGMENTED), "--val", nasty("astral.txt"), "--out",
                       str(root / "clm"), *TINY_MODEL, "--block-size", "8",
                       "--device", "cpu", "--max-steps", "2"])
    return {"cws": tiny_segmenter, "ner": root / "ner", "classify": root / "classify", "clm": root / "clm"}


# --------------------------------------------------------------------------------------- the prediction tools
TEXT_INPUTS = [*SEGMENTED, "ner_train.bmes", "cls_train.tsv"]


@pytest.mark.parametrize("name", TEXT_INPUTS)
def test_prediction_tools_keep_every_character_and_line_ending(task_models, tmp_path, name):
    lines = split_lines(text_of(name))
    segmented = run_tool(segment.main, ["--ckpt", str(task_models["cws"]), nasty(name)]).decode()
    out_lines = split_lines(segmented)
    assert [ending for _, ending in out_lines] == [ending for _, ending in lines]
    assert [join_words(out) for out, _ in out_lines] == [text for text, _ in lines]
    (tmp_path / "seg.txt").write_text(segmented, encoding="utf-8", newline="")
    assert run_tool(segment.main, ["--ckpt", str(task_models["cws"]), "--join", str(tmp_path / "seg.txt")]).decode() \
        == text_of(name)

    records = run_tool(tag.main, ["--ckpt", str(task_models["ner"]), nasty(name), "--format", "jsonl"]).decode()
    assert [json.loads(r)["text"] for r in records.split("\n")[:-1]] == [text for text, _ in lines]
    if "\t" in text_of(name):
        with pytest.raises(CharformerError, match=rf"^{re.escape(nasty(name))}:\d+: a TAB cannot be written as a CoNLL"):
            tag.main(["--ckpt", str(task_models["ner"]), nasty(name)])
    else:
        conll = run_tool(tag.main, ["--ckpt", str(task_models["ner"]), nasty(name)]).decode()
        assert "".join(row.split("\t")[0] for row, _ in split_lines(conll) if row) == "".join(t for t, _ in lines)

    labelled = run_tool(classify.main, ["--ckpt", str(task_models["classify"]), nasty(name)]).decode()
    rows = split_lines(labelled)
    assert [ending for _, ending in rows] == [ending for _, ending in lines]
    assert [row.split("\t", 1)[1] if row else "" for row, _ in rows] == [text for text, _ in lines]


def test_prediction_tools_on_a_100k_character_line(task_models, tmp_path):
    line = "".join(make_nasty.long_sentence())
    path = tmp_path / "long.txt"
    path.write_text(line + "\r\n", encoding="utf-8", newline="")
    out = run_tool(segment.main, ["--ckpt", str(task_models["cws"]), str(path), "--batch-size", "256"]).decode()
    assert out.endswith("\r\n") and join_words(out[:-2]) == line
    label, text = run_tool(classify.main, ["--ckpt", str(task_models["classify"]), str(path)]).decode().split("\t", 1)
    assert text == line + "\r\n" and label in ("0", "1")


@pytest.mark.parametrize("prompt", ["\ufeff中国", "\r\n\r", "\U00020000\U0001f600", "e\u0301", "\x00\x1b[31m", ""])
def test_sample_keeps_any_prompt(task_models, prompt):
    out = run_tool(sample.main, ["--ckpt", str(task_models["clm"]), "--prompt", prompt, "--max-new-chars", "4",
                                 "--seed", "1", "--device", "cpu"]).decode()
    assert out.startswith(prompt) and out.endswith("\n")


def test_sample_refuses_a_prompt_that_is_not_utf8(task_models):
    with pytest.raises(CharformerError, match=r"--prompt: not valid UTF-8 \(byte 0xff at character 1\)"):
        sample.main(["--ckpt", str(task_models["clm"]), "--prompt", "a\udcff"])  # how Python passes argv byte 0xFF


def test_every_cli_prints_one_error_line_and_exits_2(task_models, tmp_path):
    bad = nasty("latin1.txt")
    message = "2: not valid UTF-8 at byte offset 17 (byte 0xe9: invalid continuation byte)\n"
    commands = {  # name: (arguments, stdin, the error's FILE)
        "pretrain.py": ([str(ROOT / "pretrain.py"), "--data", bad, "--out", str(tmp_path / "p")], None, bad),
        "finetune.py": ([str(ROOT / "finetune.py"), "--task", "cws", "--train", bad, "--dev", bad, "--test", bad,
                         "--init", "scratch", "--out", str(tmp_path / "f")], None, bad),
        "segment": (["-m", "charformer.segment", "--ckpt", str(task_models["cws"]), bad], None, bad),
        "tag": (["-m", "charformer.tag", "--ckpt", str(task_models["ner"]), bad], None, bad),
        "classify": (["-m", "charformer.classify", "--ckpt", str(task_models["classify"])],
                     (NASTY / "latin1.txt").read_bytes(), "<stdin>"),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, (argv, stdin, where) in commands.items():
        proc = subprocess.run([sys.executable, *argv], input=stdin, capture_output=True, env=env, cwd=ROOT)
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert proc.stderr.decode() == f"error: {where}:{message}", name
    proc = subprocess.run([sys.executable, "-m", "charformer.sample", "--ckpt", str(task_models["clm"]), "--prompt",
                           b"caf\xe9"], capture_output=True, env=env, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr == b"error: --prompt: not valid UTF-8 (byte 0xe9 at character 3)\n"


# ------------------------------------------------------------------------------------------ property tests
# Any code point except surrogates (not encodable) and the line breaks, which end a line by definition.
LINE_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\r\n")
ENDINGS = st.sampled_from(["\n", "\r\n", "\r"])


@pytest.fixture(scope="module")
def segmenter(tiny_segmenter):
    model, vocab, task = load_task_checkpoint(tiny_segmenter)
    return model, vocab, task


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(st.text(LINE_CHARS, max_size=40), min_size=1, max_size=6))
def test_segmentation_of_any_line_is_exactly_invertible(segmenter, lines):
    model, vocab, task = segmenter
    spans = tag_texts(model, vocab, lines, batch_size=4, overlap=task["overlap"])
    for line, line_spans in zip(lines, spans):
        words = spans_to_words(line, line_spans)
        assert "".join(words) == line
        assert join_words(format_words(words)) == line


@settings(max_examples=25, deadline=None)
@given(lines=st.lists(st.tuples(st.text(LINE_CHARS, max_size=30), ENDINGS), max_size=5), bom=st.booleans(),
       last_ending=st.booleans())
def test_segment_cli_round_trip_with_any_line_endings_and_bom(tiny_segmenter, tmp_path_factory, lines, bom, last_ending):
    text = "".join(line + ending for line, ending in lines)
    if lines and not last_ending:
        text = text[: -len(lines[-1][1])]
    path = tmp_path_factory.mktemp("cli") / "in.txt"
    path.write_bytes((("\ufeff" if bom else "") + text).encode("utf-8"))
    segmented = path.with_name("seg.txt")
    segmented.write_bytes(run_tool(segment.main, ["--ckpt", str(tiny_segmenter), str(path)]))
    joined = run_tool(segment.main, ["--ckpt", str(tiny_segmenter), "--join", str(segmented)]).decode("utf-8")
    assert joined == (text if bom else text.removeprefix("\ufeff"))  # only a leading BOM is dropped


def _typed_spans():
    """(text, spans): a sentence of any characters that can be a CoNLL token, with non-overlapping typed spans."""
    token = st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\t\ufeff")
    return st.lists(st.tuples(st.text(token, min_size=1, max_size=4), st.sampled_from(["", "PER", "LOC.NAM"])),
                    min_size=1, max_size=8)


@settings(max_examples=100, deadline=None)
@given(pieces=_typed_spans(), scheme=st.sampled_from(SCHEMES), ending=ENDINGS)
def test_conll_files_round_trip_in_every_scheme(tmp_path_factory, pieces, scheme, ending):
    text, spans, start = "", [], 0
    for chunk, kind in pieces:  # typed chunks are spans, untyped ones are outside (O)
        if kind:
            spans.append((start, start + len(chunk), kind))
        text, start = text + chunk, start + len(chunk)
    tags = spans_to_tags(spans, len(text), scheme)
    path = tmp_path_factory.mktemp("conll") / "x.txt"
    path.write_bytes("".join(f"{c}\t{t}{ending}" for c, t in zip(text, tags)).encode("utf-8"))
    (sentence,) = read_conll(path, token_format="char")
    assert sentence.text == text and list(sentence.spans) == spans and list(sentence.tags) == tags


@settings(max_examples=100, deadline=None)
@given(words=st.lists(st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n "), min_size=1,
                              max_size=5), min_size=1, max_size=8), ending=ENDINGS)
def test_cws_lines_round_trip(tmp_path_factory, words, ending):
    path = tmp_path_factory.mktemp("cws") / "x.txt"
    path.write_bytes(("guard" + ending + " ".join(words) + ending).encode("utf-8"))
    sentences = read_cws(path)
    if "".join(words).isspace():
        assert len(sentences) == 1  # a whitespace-only line holds no sentence
    else:
        assert spans_to_words(sentences[1].text, sentences[1].spans) == words


@settings(max_examples=100, deadline=None)
@given(text=st.text(st.characters(exclude_categories=("Cs",)), max_size=60),
       normalization=st.sampled_from([None, "NFC", "NFKC"]))
def test_vocab_round_trips_any_text(tmp_path_factory, text, normalization):
    vocab = CharVocab.build([text or "a"], normalization=normalization)
    assert vocab.decode(vocab.encode(text)) == vocab.normalize(text)
    assert len(vocab.encode_aligned(text)) == len(text)  # per-character ids stay aligned with the characters
    path = tmp_path_factory.mktemp("vocab") / "vocab.json"
    vocab.save(path)
    assert CharVocab.load(path) == vocab and CharVocab.load(path).encode(text) == vocab.encode(text)
