"""CharVocab: exact round trips, deterministic ids, cut-offs, [UNK], save/load."""

import pytest
from hypothesis import given, strategies as st

from charformer.errors import CharformerError
from charformer.vocab import SPECIAL_TOKENS, UNK_ID, CharVocab


def test_round_trip_and_special_ids():
    text = "天地玄黄，宇宙洪荒。 Hello\u3000world\n𠀀😀e\u0301"
    vocab = CharVocab.build([text])
    assert vocab.decode(vocab.encode(text)) == text
    assert vocab.itos[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert len(vocab) == len(SPECIAL_TOKENS) + len(set(text))


def test_ids_do_not_depend_on_corpus_order():
    a = CharVocab.build(["abc", "cab"])
    b = CharVocab.build(["cba"])
    assert a.itos == b.itos
    # characters follow the specials in code-point order
    assert a.encode("abc") == [len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + 1, len(SPECIAL_TOKENS) + 2]


def test_unknown_characters_map_to_unk_and_coverage_counts_them():
    vocab = CharVocab.build(["aab"])
    assert vocab.encode("abz") == [vocab.stoi["a"], vocab.stoi["b"], UNK_ID]
    assert vocab.coverage("abzz") == pytest.approx(0.5)
    assert vocab.decode(vocab.encode("az"), keep_special=True) == "a[UNK]"


def test_min_freq_max_size_and_coverage_cutoffs():
    text = "a" * 6 + "b" * 3 + "c" * 1  # 10 characters
    assert set(CharVocab.build([text], min_freq=2).stoi) == {"a", "b"}
    assert set(CharVocab.build([text], max_size=1).stoi) == {"a"}
    assert set(CharVocab.build([text], coverage=0.6).stoi) == {"a"}  # a alone covers 60%
    assert set(CharVocab.build([text], coverage=0.61).stoi) == {"a", "b"}
    # ties in frequency are broken by code point, so max_size is deterministic
    assert set(CharVocab.build(["zyx"], max_size=2).stoi) == {"x", "y"}


def test_save_load_gives_identical_ids(tmp_path):
    vocab = CharVocab.build(["春眠不觉晓，处处闻啼鸟。"], normalization="NFC")
    vocab.save(tmp_path / "vocab.json")
    again = CharVocab.load(tmp_path / "vocab.json")
    assert again == vocab and again.stoi == vocab.stoi


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(CharformerError, match="not found"):
        CharVocab.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CharformerError, match="bad.json"):
        CharVocab.load(bad)


def test_empty_corpus_is_an_error():
    with pytest.raises(CharformerError, match="empty"):
        CharVocab.build([""])


@given(st.text(max_size=200))
def test_round_trip_property(text):
    vocab = CharVocab.build([text + "x"])
    assert vocab.decode(vocab.encode(text)) == text
    assert len(vocab.encode(text)) == len(text)
