"""Write the hostile-input corpus beside this script: tiny files, each with one kind of trouble that real text
files have (byte-order marks, CR and CRLF line endings, odd spaces, characters outside the Basic Multilingual
Plane, combining marks, control characters, blank lines, bytes that are not UTF-8, malformed CoNLL, labels only
seen at test time). `tests/test_hostile_input.py` runs every reader and command-line tool on them.

    python tests/nasty/make_nasty.py        # rewrite the files (the test checks they match this script)

The 100,000-character line is not stored: `long_sentence()` makes it at test time.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
BOM = "\ufeff"

# Segmented text (words separated by ASCII spaces), usable as a pretraining corpus (raw text), as CWS training
# data, and (spaces and all) as input to the prediction tools.
SEGMENTED = {
    "bom_crlf.txt": BOM + "中国 人民 站 起来 了\r\n我们 在 北京\r\n",
    "lone_cr.txt": "中国 人民\r站 起来 了\r我们 在 北京\r",
    "mixed_endings.txt": "中国 人民\n站 起来\r\n了\r我们\n\r\n最后 一行",  # no final line break
    "unicode_spaces.txt": ("\u3000\u3000中国 人民\u3000站 起来\n热传\u00a0 了 ＡＢＣ １２３\n"
                           "北京\u2009天安门 \u200b 。\u202f好\n"),
    "astral.txt": "\U00020000 \U00020001\U00020002 中国\n\U0001f600 \U0001f44d\U0001f3fd 好\n"
                  "\U0001f468\u200d\U0001f469\u200d\U0001f467 家庭\n",
    "combining.txt": "cafe\u0301 中国\ne\u0301 n\u0303o \u0301\n한국어 नमस्ते\n",
    "control.txt": "中\x00国 人\x07民\n\x1b[31m 红\x7f\n北京\x0b天安门\x0c 了\n中国\u2028人民 \x85站\tA\n",
    "blank_lines.txt": "\n \n\t\n中国 人民\n\u3000\n\n   \n了\n\n",
}

# Files that are not UTF-8: every tool must refuse them with the byte offset.
NOT_UTF8 = {
    "latin1.txt": "中国 人民\n".encode() + "caf\u00e9 au lait\n".encode("latin-1"),  # bad byte at offset 17, line 2
    "utf16.txt": "中国 人民\n".encode("utf-16"),  # starts with the UTF-16 byte-order mark FF FE
    "truncated.txt": "中国 人民\n北京".encode()[:-1],  # a multi-byte character cut off by the end of the file
}

# Character-per-line NER files (BMES, as the Resume corpus): odd characters as tokens; dev and test have an entity
# type (LOC) that the training file never has.
NER = {
    "ner_train.bmes": BOM + "张 B-NAME\r\n三 E-NAME\r\n\u3000 O\r\n\U00020000 S-NAME\r\n\r\n"
                      "\U0001f600 O\r\n北 B-ORG\r\n大 E-ORG\r\n\u0301 O\r\n",
    "ner_dev.bmes": "李 B-NAME\n四 E-NAME\n在 O\n上 B-LOC\n海 E-LOC\n",
    "ner_test.bmes": "\n\n王 S-NAME\n去 O\n京 S-LOC\n\n",
    "ner_missing_tag.bmes": "张 B-NAME\n三\n",  # line 2 has no tag
    "ner_extra_columns.bmes": "张 B-NAME\n三 E-NAME x\n",  # line 2 has three columns
    "ner_combining.bmes": "e\u0301 S-NAME\n",  # one letter written as two code points
}

# Classification TSV: a BOM before the header, CRLF, odd characters in the texts; the test file has a label (2)
# that the training file never has.
CLASSIFY = {
    "cls_train.tsv": BOM + "label\ttext_a\r\n1\t房间\u3000很好\U0001f44d\r\n0\t很差\u2028失望\x07\r\n"
                     "1\t\"干净\"的 cafe\u0301\r\n0\t\U00020000讨厌\r\n",
    "cls_test.tsv": "label\ttext_a\n1\t很好\n2\t一般\n0\t\U0001f600\n",
}

LONG_LINE_CHARS = 100_000


def long_sentence(n: int = LONG_LINE_CHARS) -> list[str]:
    """The words of an `n`-character sentence (one line, far longer than any model block): words of 1-3
    characters from a small mixed set, astral characters and U+3000 included. ``"".join`` is the raw line,
    ``" ".join`` its segmented form."""
    pool = ("中国", "人", "民", "\U00020000", "\u3000", "起来了", "ab", "１", "\U0001f600")
    words, size = [], 0
    while size < n:
        word = pool[len(words) % len(pool)][: n - size]
        words.append(word)
        size += len(word)
    return words


def files() -> dict[str, bytes]:
    """Every file of the corpus: name -> bytes."""
    text = {**SEGMENTED, **NER, **CLASSIFY}
    return {**{name: content.encode("utf-8") for name, content in text.items()}, **NOT_UTF8}


def main() -> None:
    for name, data in files().items():
        (HERE / name).write_bytes(data)


if __name__ == "__main__":
    main()
