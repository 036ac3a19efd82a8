"""Tagging schemes, Viterbi and the CRF: round trips, the grammar, decoders that never break it."""

import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st

from charformer.tasks.crf import CRF
from charformer.tasks.heads import TokenTaggingHead
from charformer.tasks.schemes import (SCHEMES, can_follow, detect_scheme, is_valid, spans_to_tags, tag_set,
                                      tags_to_spans, transition_masks, words_to_spans)


@st.composite
def typed_spans(draw, max_len=30):
    """n and non-overlapping typed spans over [0, n), with gaps (O characters) between some."""
    n = draw(st.integers(0, max_len))
    spans, pos = [], 0
    while pos < n:
        pos += draw(st.integers(0, 2))  # a gap of O characters
        if pos >= n:
            break
        end = min(n, pos + draw(st.integers(1, 5)))
        spans.append((pos, end, draw(st.sampled_from(["PER", "ORG", "LOC.NAM"]))))
        pos = end
    return n, spans


@settings(deadline=None)  # timing varies on a shared machine; the property does not
@given(typed_spans(), st.sampled_from(SCHEMES))
def test_spans_tags_round_trip_in_every_scheme(case, scheme):
    n, spans = case
    tags = spans_to_tags(spans, n, scheme)
    assert len(tags) == n
    assert is_valid(tags, scheme)
    assert tags_to_spans(tags) == spans


@settings(deadline=None)  # timing varies on a shared machine; the property does not
@given(st.lists(st.text(alphabet="中国人民ab1，", min_size=1, max_size=4), max_size=12))
def test_words_bmes_round_trip(words):
    text = "".join(words)
    tags = spans_to_tags(words_to_spans(words), len(text), "BMES")
    assert set(tags) <= {"B", "M", "E", "S"} and is_valid(tags, "BMES")
    assert [text[s:e] for s, e, _ in tags_to_spans(tags)] == words


def test_tags_of_known_examples():
    spans = [(0, 1, "PER"), (2, 5, "ORG")]
    assert spans_to_tags(spans, 6, "BIO") == ["B-PER", "O", "B-ORG", "I-ORG", "I-ORG", "O"]
    assert spans_to_tags(spans, 6, "BIOES") == ["S-PER", "O", "B-ORG", "I-ORG", "E-ORG", "O"]
    assert spans_to_tags(spans, 6, "BMES") == ["S-PER", "O", "B-ORG", "M-ORG", "E-ORG", "O"]
    assert spans_to_tags(words_to_spans(["中国", "人", "站起来"]), 6, "BMES") == ["B", "E", "S", "B", "M", "E"]
    with pytest.raises(ValueError, match="overlaps"):
        spans_to_tags([(0, 3, "A"), (2, 4, "B")], 5, "BIO")


def test_malformed_tag_sequences_are_read_like_the_conll_scorer():
    assert tags_to_spans(["O", "I-PER", "I-PER", "O"]) == [(1, 3, "PER")]  # I without B starts an entity
    assert tags_to_spans(["B-PER", "I-ORG"]) == [(0, 1, "PER"), (1, 2, "ORG")]  # a type change starts another
    assert tags_to_spans(["B-PER", "M-PER"]) == [(0, 2, "PER")]  # unfinished at the end: kept
    assert tags_to_spans(["E-LOC", "S-LOC", "B-LOC", "E-LOC"]) == [(0, 1, "LOC"), (1, 2, "LOC"), (2, 4, "LOC")]
    assert not is_valid(["O", "I-PER"], "BIO") and not is_valid(["B", "S"], "BMES") and not is_valid(["B"], "BMES")


def test_grammar_and_detection():
    assert can_follow("B-PER", "I-PER", "BIO") and not can_follow("B-PER", "I-ORG", "BIO")
    assert can_follow("B-PER", "B-PER", "BIO") and not can_follow("B-PER", "B-PER", "BIOES")
    assert not can_follow(None, "E", "BMES") and not can_follow("S", "M", "BMES")
    assert not can_follow(None, "M-X", "BIOES")  # M is not a BIOES prefix
    assert detect_scheme(["O", "B-A", "M-A", "E-A"]) == "BMES"
    assert detect_scheme(["O", "S-A"]) == "BIOES" and detect_scheme(["O", "B-A", "I-A"]) == "BIO"
    assert tag_set("BIO", ["PER", "LOC"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def _random_scores(k, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(lengths), max(lengths), k, generator=g) * 5, torch.tensor(lengths)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("crf", [False, True])
def test_viterbi_never_outputs_an_invalid_sequence(scheme, crf):
    tags = tag_set(scheme, ["PER", "ORG"]) if scheme != "BMES" else tag_set("BMES", [""], outside=False)
    head = TokenTaggingHead(8, tags, scheme, crf=crf)
    if crf:  # learned transitions that would favour forbidden moves must still never be taken
        torch.nn.init.normal_(head.crf.trans, std=10.0)
    for seed in range(20):
        scores, lengths = _random_scores(len(tags), [1, 2, 7, 19], seed)
        for path, n in zip(head.decode(scores, lengths), lengths.tolist()):
            assert len(path) == n
            assert is_valid([tags[i] for i in path], scheme), [tags[i] for i in path]


def test_viterbi_finds_the_best_valid_path_by_brute_force():
    tags = tag_set("BMES", [""], outside=False)
    head = TokenTaggingHead(8, tags, "BMES")
    scores, lengths = _random_scores(4, [5], seed=3)
    log_probs = scores.log_softmax(-1)[0]
    valid = [p for p in itertools.product(range(4), repeat=5) if is_valid([tags[i] for i in p], "BMES")]
    best = max(valid, key=lambda p: sum(log_probs[t, i] for t, i in enumerate(p)))
    assert head.decode(scores, lengths)[0] == list(best)


def test_crf_likelihood_matches_brute_force_enumeration():
    tags = tag_set("BIO", ["X"])
    start_ok, trans_ok, end_ok = transition_masks(tags, "BIO")
    crf = CRF(start_ok, trans_ok, end_ok)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (crf.start, crf.trans, crf.end):
            p.copy_(torch.randn(p.shape, generator=g))
    emissions, lengths = _random_scores(3, [4, 2], seed=1)
    gold = torch.tensor([[1, 2, 0, 1], [0, 1, -100, -100]])
    start, trans, end = crf.scores()

    def path_score(b, path):
        s = start[path[0]] + end[path[-1]] + sum(emissions[b, t, i] for t, i in enumerate(path))
        return s + sum(trans[a, c] for a, c in zip(path, path[1:]))

    expected = []
    for b, n in enumerate(lengths.tolist()):
        scores = torch.stack([path_score(b, p) for p in itertools.product(range(3), repeat=n)])
        expected.append(torch.logsumexp(scores, 0) - path_score(b, gold[b, :n].tolist()))
    torch.testing.assert_close(crf.nll(emissions, gold, lengths), torch.stack(expected), rtol=1e-5, atol=1e-4)
