"""Readers of the CWS, NER and classification formats: quirks of the real corpora, and a clear error (file and
line) for every kind of malformed input."""

import pytest

from charformer.errors import CharformerError
from charformer.tasks.readers import read_conll, read_cws, read_labeled
from charformer.tasks.schemes import spans_to_words


def _write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def test_cws_splits_on_ascii_space_only_and_skips_empty_lines(tmp_path):
    path = _write(tmp_path, "seg.txt", "中国  人民 站\u3000起来\n\n  \n热传\u00a0 了 ABC １２３\r\nlast")
    sentences = read_cws(path)
    assert [spans_to_words(s.text, s.spans) for s in sentences] == [
        ["中国", "人民", "站\u3000起来"], ["热传\u00a0", "了", "ABC", "１２３"], ["last"]]
    assert [s.where for s in sentences] == [f"{path}:1", f"{path}:4", f"{path}:5"]
    ideographic = _write(tmp_path, "as.txt", "中国\u3000人民\u3000 站\n")
    assert spans_to_words(*[(s.text, s.spans) for s in read_cws(ideographic, sep="U+3000")][0]) == ["中国", "人民", " 站"]


def test_cws_errors(tmp_path):
    with pytest.raises(CharformerError, match=r"bad.txt:2: not valid UTF-8 at byte offset 7 "):
        read_cws(_write(tmp_path, "bad.txt", "中国\n".encode() + "é".encode("latin-1")))
    with pytest.raises(CharformerError, match="empty.txt: no sentences"):
        read_cws(_write(tmp_path, "empty.txt", "\n \n"))
    with pytest.raises(CharformerError, match="separator must not be empty"):
        read_cws(_write(tmp_path, "ok.txt", "a b\n"), sep="")


def test_conll_bmes_and_weibo_position_tokens(tmp_path):
    resume = _write(tmp_path, "r.bmes", "张 B-NAME\n三 E-NAME\n， O\n\n\n男 S-GENDER\n")
    sentences = read_conll(resume)
    assert [(s.text, s.spans) for s in sentences] == [("张三，", ((0, 2, "NAME"),)), ("男", ((0, 1, "GENDER"),))]
    assert sentences[1].where == f"{resume}:6" and sentences[0].tags == ("B-NAME", "E-NAME", "O")
    # Weibo: character + word position (which may have two digits, and the character may be a digit); a lost
    # character is a run of U+FFFD; the character may be a space when columns are tab-separated
    weibo = _write(tmp_path, "w.conll", "叔0\tB-PER.NOM\n叔1\tI-PER.NOM\n310\tO\np12\tO\n\ufffd\ufffd0\tO\n 0\tO\n")
    (sentence,) = read_conll(weibo)
    assert sentence.text == "叔叔3p\ufffd " and sentence.spans == ((0, 2, "PER.NOM"),)
    assert read_conll(weibo, token_format="char+position")[0].text == sentence.text


@pytest.mark.parametrize("content, message", [
    ("张 B-NAME\n三\n", r"x.txt:2: missing tag"),
    ("张 B-NAME extra\n", r"x.txt:1: 3 columns, expected 2"),
    ("张\tB-NAME\t\n", r"x.txt:1: 3 columns, expected 2"),
    ("张 X-NAME\n", r"x.txt:1: not a B/I/M/E/S/O tag: 'X-NAME'"),
    ("张 O-NAME\n", r"x.txt:1: not a B/I/M/E/S/O tag"),
    ("张 O\n\n张三 O\n", r"x.txt:3: token '张三' is not one character"),
    ("叔0\tO\n叔\tO\n", r"x.txt:2: token '叔' is not one character followed by its word-position number"),
    ("\n\n", r"x.txt: no sentences"),
])
def test_conll_errors_name_file_and_line(tmp_path, content, message):
    with pytest.raises(CharformerError, match=message):
        read_conll(_write(tmp_path, "x.txt", content))


def test_conll_bad_encoding_gives_byte_offset(tmp_path):
    with pytest.raises(CharformerError, match=r"x.txt:3: not valid UTF-8 at byte offset 5 "):
        read_conll(_write(tmp_path, "x.txt", b"a O\n\n\xff O\n"))


def test_labeled_tsv_with_header_quotes_and_odd_whitespace(tmp_path):
    path = _write(tmp_path, "c.tsv", 'label\ttext_a\n1\t"好"的\u3000 房间 \n\n0\t差\u2028评\n')
    docs = read_labeled(path)
    assert [(d.label, d.text) for d in docs] == [("1", '"好"的\u3000 房间 '), ("0", "差\u2028评")]
    assert [d.where for d in docs] == [f"{path}:2", f"{path}:4"]
    headerless = _write(tmp_path, "h.tsv", "1\t好\n0\t差\n")
    assert [(d.label, d.text) for d in read_labeled(headerless)] == [("1", "好"), ("0", "差")]


def test_labeled_csv_with_named_columns_and_quoted_newline(tmp_path):
    path = _write(tmp_path, "c.csv", 'id,review,sentiment\n7,"好,很好\n真的",pos\n8,差,neg\n')
    docs = read_labeled(path, label_column="sentiment")
    assert [(d.label, d.text, d.where) for d in docs] == [("pos", "好,很好\n真的", f"{path}:2"), ("neg", "差", f"{path}:4")]
    by_index = read_labeled(path, label_column="2", text_column="1")
    assert [d.text for d in by_index] == [d.text for d in docs]  # "sentiment" header detected for an index too


@pytest.mark.parametrize("content, kwargs, message", [
    ("label\ttext_a\n1\t好\n0\n", {}, r"x.tsv:3: 1 columns, expected 2"),
    ("label\ttext_a\n1\t好\t多\n", {}, r"x.tsv:2: 3 columns, expected 2"),
    ("label\ttext_a\n\t好\n", {}, r"x.tsv:2: empty label"),
    ("label\ttext_a\n1\t\n", {}, r"x.tsv:2: empty text"),
    ("label\ttext_a\n", {}, r"x.tsv: a header but no data rows"),
    ("label\ttext_a\n1\t好\n", {"text_column": "review"}, r"x.tsv:1: no text column 'review' in the header"),
    ("a\tb\tc\n1\t2\t3\n", {"label_column": "0"}, r"x.tsv:1: cannot tell which of 3 columns is the text"),
])
def test_labeled_errors_name_file_and_line(tmp_path, content, kwargs, message):
    with pytest.raises(CharformerError, match=message):
        read_labeled(_write(tmp_path, "x.tsv", content), **kwargs)


def test_labeled_csv_syntax_error_has_line(tmp_path):
    with pytest.raises(CharformerError, match=r"x.csv:3: "):
        read_labeled(_write(tmp_path, "x.csv", 'label,text\n1,ok\n0,"unterminated\n'))
