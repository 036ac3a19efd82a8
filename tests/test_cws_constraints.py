"""User dictionaries and protected runs as constraints on the BMES lattice: the dictionary file format, the
leftmost-longest matcher against a brute-force reference, the bias on hand-worked cases, and the property that
a constrained decoder never splits a forced word or cuts inside a protected run, on 10,000 generated cases
of random dictionaries, texts and model scores (decoder only, no model needed)."""

import random
import re

import pytest
import torch
from hypothesis import given, settings, strategies as st

from charformer.errors import CharformerError
from charformer.tasks.constraints import BMES, lattice_bias, protected_spans, runs_outside_words
from charformer.tasks.lexicon import Lexicon, read_lexicon
from charformer.tasks.schemes import is_valid, tags_to_spans, transition_masks
from charformer.tasks.viterbi import viterbi

NEG_INF = float("-inf")


# ------------------------------------------------------------------------------------------ dictionary files
def test_dictionary_file_with_bom_crlf_comments_weights_and_spaces(tmp_path):
    path = tmp_path / "user.dict"
    path.write_bytes("\ufeff# a comment\r\n深度求索\r\n\r\n  \r\nCOVID-19 疫苗\t2.5\r\n\\#话题#\nC#\t0.5\r中国\t3\n中国\t4"
                     .encode("utf-8"))
    lexicon = read_lexicon(path)
    assert len(lexicon) == 5  # the second 中国 replaces the first
    assert lexicon.matches("用C#和COVID-19 疫苗，中国#话题#深度求索") == [
        (1, 3, 0.5), (4, 15, 2.5), (16, 18, 4.0), (18, 22, 1.0), (22, 26, 1.0)]


@pytest.mark.parametrize("content, line, message", [
    ("好\n词\t1\t2\n", 2, "found 2 TABs"),
    ("词\tabc\n", 1, "the weight 'abc' is not a number"),
    ("# c\n\n词\t0\n", 3, "finite number > 0"),
    ("词\tnan\n", 1, "finite number > 0"),
    ("词\t-1\n", 1, "finite number > 0"),
    ("好\r\n \t2\r\n", 2, "no word before the TAB"),
])
def test_malformed_dictionary_lines_name_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "bad.dict"
    path.write_text(content, encoding="utf-8", newline="")
    with pytest.raises(CharformerError, match=rf"^{re.escape(str(path))}:{line}: .*{re.escape(message)}"):
        read_lexicon(path)


def test_dictionary_that_is_not_utf8_names_line_and_offset(tmp_path):
    path = tmp_path / "latin1.dict"
    path.write_bytes(b"ok\ncaf\xe9\n")
    with pytest.raises(CharformerError, match=rf"^{re.escape(str(path))}:2: not valid UTF-8 at byte offset 6"):
        read_lexicon(path)


# ---------------------------------------------------------------------------------------------- the matcher
def brute_force_matches(words, text):
    """Leftmost-longest non-overlapping matches by trying every word at every position."""
    found, i = [], 0
    while i < len(text):
        hits = [w for w in words if text.startswith(w, i)]
        if hits:
            longest = max(hits, key=len)
            found.append((i, i + len(longest)))
            i += len(longest)
        else:
            i += 1
    return found


def test_leftmost_longest_by_hand():
    lexicon = Lexicon(["中国", "中国人", "人民", "ab", "bc"])
    assert lexicon.matches("中国人民站起来了") == [(0, 3, 1.0)]  # 中国人 wins over 中国; 民 starts nothing
    assert lexicon.matches("abc") == [(0, 2, 1.0)]  # leftmost first: ab, and bc would overlap it
    assert lexicon.matches("") == [] and Lexicon([]).matches("中国") == []


@settings(max_examples=300, deadline=None)
@given(words=st.lists(st.text("abc中", min_size=1, max_size=4), max_size=8), text=st.text("abc中x", max_size=40))
def test_matcher_agrees_with_brute_force(words, text):
    assert [(s, e) for s, e, _ in Lexicon(words).matches(text)] == brute_force_matches(set(words), text)


# ------------------------------------------------------------------------------------------ protected runs
def test_protected_runs_of_the_issue():
    text = "3.14和１９９８年COVID-19在GitHub上，见https://example.org/a?b=1。写信给a.b@example.com，共1,000,000人，1，2，3"
    assert [text[s:e] for s, e in protected_spans(text)] == [
        "3.14", "１９９８", "COVID-19", "GitHub", "https://example.org/a?b=1", "a.b@example.com", "1,000,000"]


def test_bias_by_hand():
    lexicon = Lexicon({"中国人": 1.0, "民": 2.0})
    bias = lattice_bias("中国人民3.14", lexicon=lexicon)
    inf = NEG_INF
    assert bias.tolist() == [[0, inf, inf, inf], [inf, 0, inf, inf], [inf, inf, 0, inf],  # 中国人: B M E
                             [inf, inf, inf, 0],  # 民: S
                             [0, 0, inf, inf], [inf, 0, inf, inf], [inf, 0, inf, inf], [inf, 0, 0, inf]]  # 3.14
    preferred = lattice_bias("中国人民", lexicon=lexicon, mode="prefer", bonus=1.5, protect=False)
    assert preferred.tolist() == [[1.5, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 1.5, 0], [0, 0, 0, 3.0]]
    assert lattice_bias("中国", protect=True) is None
    with pytest.raises(ValueError, match="dictionary mode"):
        lattice_bias("中国", mode="always")


def test_a_dictionary_word_beats_a_protected_run_that_crosses_it():
    lexicon = Lexicon(["版本3", "COVID-19疫苗"])
    text = "版本3.14和COVID-19疫苗"
    assert protected_spans(text) == [(2, 6), (7, 15)]
    words = lexicon.matches(text)
    assert runs_outside_words([(2, 6), (7, 15)], words) == [(7, 15)]
    spans = decode(torch.zeros(len(text), 4), lattice_bias(text, lexicon=lexicon))
    assert (0, 3) in spans and (7, 17) in spans


# --------------------------------------------------------------------------------------------- the decoder
START, TRANS, END = (torch.zeros(m.shape).masked_fill(~m, NEG_INF) for m in transition_masks(BMES, "BMES"))


def decode(scores, bias):
    """Word spans of one sentence decoded by the softmax tagger's rule (log-probabilities + bias)."""
    emissions = scores.log_softmax(-1) + (0 if bias is None else bias)
    path = viterbi(emissions[None], torch.tensor([len(scores)]), START, TRANS, END)[0]
    return [(s, e) for s, e, _ in tags_to_spans([BMES[i] for i in path])]


def test_protection_holds_against_a_model_that_cuts_everything():
    text = "COVID-19疫苗3.14元"
    everything_single = torch.tensor([[0.0, 0.0, 0.0, 20.0]]).repeat(len(text), 1)  # S everywhere
    assert decode(everything_single, lattice_bias(text, protect=False)) == [(i, i + 1) for i in range(len(text))]
    assert decode(everything_single, lattice_bias(text)) == [(0, 8), (8, 9), (9, 10), (10, 14), (14, 15)]


def test_prefer_mode_is_a_bonus_the_model_can_overrule():
    text, lexicon = "中国人", Lexicon(["中国"])
    unsure = torch.zeros(3, 4)  # every tag equally likely
    confident = torch.tensor([[0.0, 0.0, 0.0, 9.0]]).repeat(3, 1)  # S by 9 nats a character
    prefer = lattice_bias(text, lexicon=lexicon, mode="prefer", bonus=2.0)
    assert decode(unsure, prefer) == [(0, 2), (2, 3)]
    assert decode(confident, prefer) == [(0, 1), (1, 2), (2, 3)]
    assert decode(confident, lattice_bias(text, lexicon=lexicon, mode="force")) == [(0, 2), (2, 3)]


ALPHABET = "ab中国人3.-xＡ"  # few characters, so words recur and protected runs ("3.3", "ab-3") form


def check_forced_decoding(cases, crf_seed=None):
    """Decode `cases` ((dictionary words, text, protect, seed) each) in one batch on random scores (seeded) with
    the constraints, and check the property: a valid BMES path, the words spell the text, every chosen
    dictionary occurrence is a word, and no cut falls inside a protected run that crosses no chosen word."""
    lengths = torch.tensor([len(text) for _, text, _, _ in cases])
    width = max(1, int(lengths.max()))
    emissions, bias = torch.zeros(len(cases), width, 4), torch.zeros(len(cases), width, 4)
    for row, (words, text, protect, seed) in enumerate(cases):
        generator = torch.Generator().manual_seed(seed)
        emissions[row, : len(text)] = (torch.randn(len(text), 4, generator=generator) * 4).log_softmax(-1)
        row_bias = lattice_bias(text, lexicon=Lexicon(words), protect=protect)
        if row_bias is not None:
            bias[row, : len(text)] = row_bias
    trans = TRANS  # a CRF's learned transitions, forbidden ones kept:
    if crf_seed is not None:
        trans = trans + torch.randn(4, 4, generator=torch.Generator().manual_seed(crf_seed)) * 3
    paths = viterbi(emissions + bias, lengths, START, trans, END)
    for (words, text, protect, _), path in zip(cases, paths):
        tags = [BMES[i] for i in path]
        assert is_valid(tags, "BMES")
        spans = [(s, e) for s, e, _ in tags_to_spans(tags)]
        assert "".join(text[s:e] for s, e in spans) == text
        chosen = Lexicon(words).matches(text)
        assert all((s, e) in spans for s, e, _ in chosen), (words, text, spans)
        cuts = {s for s, _ in spans}
        for run in protected_spans(text) if protect else []:
            crosses = any(ws < run[1] and run[0] < we and not (ws <= run[0] and run[1] <= we) for ws, we, _ in chosen)
            if not crosses:
                assert not cuts & set(range(run[0] + 1, run[1])), (text, run, spans)


@st.composite
def constrained_case(draw):
    """(dictionary words, text, protect, seed): the text is built partly from dictionary words."""
    words = draw(st.lists(st.text(ALPHABET, min_size=1, max_size=4), max_size=5))
    pieces = st.one_of(st.sampled_from(words), st.text(ALPHABET, max_size=2)) if words else st.text(ALPHABET, max_size=2)
    text = "".join(draw(st.lists(pieces, max_size=8)))
    return words, text, draw(st.booleans()), draw(st.integers(0, 2**31 - 1))


@settings(max_examples=300, deadline=None)
@given(case=constrained_case(), crf_seed=st.one_of(st.none(), st.integers(0, 2**31 - 1)))
def test_forced_words_are_never_split(case, crf_seed):
    check_forced_decoding([case], crf_seed)


def random_case(rng: random.Random):
    """As `constrained_case`, drawn by a seeded generator (cheap enough for 10,000)."""
    words = ["".join(rng.choices(ALPHABET, k=rng.randint(1, 4))) for _ in range(rng.randint(0, 5))]
    pieces = [rng.choice(words) if words and rng.random() < 0.5 else "".join(rng.choices(ALPHABET, k=rng.randint(0, 2)))
              for _ in range(rng.randint(0, 8))]
    return words, "".join(pieces), rng.random() < 0.5, rng.randrange(2**31)


def test_forced_words_are_never_split_in_10000_generated_cases():
    rng = random.Random(15)
    for batch in range(500):  # batches of 20: 10,000 cases, half with CRF-like transitions
        check_forced_decoding([random_case(rng) for _ in range(20)], batch if batch % 2 else None)
