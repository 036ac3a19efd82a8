"""Metrics against cases computed by hand."""

import pytest

from charformer.tasks.metrics import classification_scores, cws_scores, entity_scores


def test_cws_scores_like_the_sighan_scorer_with_oov_recall():
    gold = [["中国", "人民", "站", "起来", "了"], ["我们", "爱", "北京"]]
    pred = [["中国", "人", "民", "站起来", "了"], ["我们", "爱北京"]]
    train_words = {"中国", "了", "我们", "站", "人民"}
    s = cws_scores(gold, pred, train_words)
    # correct words (same characters at the same place): 中国, 了, 我们 = 3 of 7 predicted and 8 gold
    assert s["precision"] == pytest.approx(3 / 7) and s["recall"] == pytest.approx(3 / 8)
    assert s["f1"] == pytest.approx(2 * (3 / 7) * (3 / 8) / (3 / 7 + 3 / 8))
    # gold OOV words: 起来, 爱, 北京 (none found); IV: 中国, 人民, 站, 了, 我们 (中国, 了, 我们 found)
    assert s["oov_recall"] == 0.0 and s["iv_recall"] == pytest.approx(3 / 5)
    assert s["oov_rate"] == pytest.approx(3 / 8) and (s["gold_words"], s["predicted_words"]) == (8, 7)
    # a word repeated elsewhere in the sentence is not a match (spans, not bags of words)
    assert cws_scores([["a", "b", "a"]], [["a", "ba"]], set())["precision"] == pytest.approx(1 / 2)
    assert cws_scores([["ab"]], [["ab"]], {"ab"})["oov_recall"] is None


def test_cws_scores_refuse_different_characters():
    with pytest.raises(ValueError, match="do not spell"):
        cws_scores([["中国"]], [["中", "华"]], set())


def test_entity_scores_micro_and_per_type():
    gold = [[(0, 2, "PER"), (3, 5, "ORG")], [(1, 2, "LOC")]]
    pred = [[(0, 2, "PER"), (3, 5, "LOC")], [(1, 2, "LOC"), (4, 6, "PER")]]
    s = entity_scores(gold, pred)
    # correct: (0,2,PER) and (1,2,LOC): 2 of 4 predicted, 2 of 3 gold
    assert (s["precision"], s["recall"]) == (pytest.approx(2 / 4), pytest.approx(2 / 3))
    assert s["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert s["per_type"]["PER"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "gold": 1, "predicted": 2}
    assert s["per_type"]["ORG"]["f1"] == 0.0 and s["per_type"]["LOC"]["precision"] == 0.5
    assert entity_scores([[]], [[]])["f1"] == 0.0


def test_classification_scores():
    gold = ["0", "0", "1", "1", "1", "2"]
    pred = ["0", "1", "1", "1", "0", "1"]
    s = classification_scores(gold, pred, ["0", "1", "2"])
    assert s["accuracy"] == pytest.approx(3 / 6)
    assert s["confusion"] == {"labels": ["0", "1", "2"], "matrix": [[1, 1, 0], [1, 2, 0], [0, 1, 0]]}
    # F1: class 0: P 1/2 R 1/2 -> 0.5; class 1: P 2/4 R 2/3 -> 4/7; class 2: 0
    assert s["per_class_f1"] == {"0": 0.5, "1": pytest.approx(4 / 7), "2": 0.0}
    assert s["macro_f1"] == pytest.approx((0.5 + 4 / 7 + 0) / 3)
    # a label absent from gold and prediction does not dilute macro-F1; an unknown gold label is added
    assert classification_scores(["a"], ["a"], ["a", "b"])["macro_f1"] == 1.0
    assert classification_scores(["c"], ["a"], ["a"])["confusion"]["labels"] == ["a", "c"]
