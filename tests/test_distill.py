"""Knowledge distillation (charformer.finetuning.distill): the loss against a hand-computed KL, the CRF's
forward-backward marginals against enumeration of every path, alpha=0 as the plain loss, a student that learns
a teacher's tags (not the gold ones), and finetune.py --distill-from end to end."""

import itertools
import json
import math

import pytest
import torch

import finetune
from charformer.errors import CharformerError
from charformer.finetuning.distill import Distill, kl_divergence, tag_distribution, vocab_map
from charformer.model import ModelConfig
from charformer.tasks.crf import CRF
from charformer.tasks.model import build_task_model
from charformer.tasks.objectives import TaggingObjective
from charformer.tasks.predict import tag_texts
from charformer.tasks.readers import read_cws
from charformer.tasks.schemes import spans_to_words, tag_set, transition_masks
from charformer.vocab import UNK_ID, CharVocab
from tests.test_finetune_cli import TINY
from tests.test_multi_criteria import corpora, mc_model  # noqa: F401 (fixtures)

BMES = tag_set("BMES", [""], outside=False)
TASK = {"task": "cws", "scheme": "BMES", "tags": BMES, "crf": False, "head_dropout": 0.0, "overlap": 4}
TEXTS = ["我们在北京天安门", "中国人民站起来了", "北京人民在中国"]
# Two segmentations of TEXTS: the teacher learns the first; the student's gold file says the second.
TEACHER_WORDS = [["我们", "在", "北京", "天安门"], ["中国", "人民", "站起来", "了"],
                 ["北京", "人民", "在", "中国"]]
OTHER_WORDS = [["我", "们在北", "京天安门"], ["中国人", "民站", "起来了"], ["北京人民在", "中", "国"]]


pytestmark = pytest.mark.usefixtures("one_thread")


def write_cws(path, segmentations) -> list:
    path.write_text("".join(" ".join(words) + "\n" for words in segmentations), encoding="utf-8")
    return read_cws(path)


def tagger(vocab: CharVocab, *, seed: int, crf: bool = False, **sizes):
    cfg = ModelConfig(**{"vocab_size": len(vocab), "block_size": 16, "n_layers": 1, "n_heads": 2, "d_model": 32,
                         "dropout": 0.0, "causal": False, **sizes})
    torch.manual_seed(seed)
    return build_task_model(cfg, {**TASK, "crf": crf})


def objective_for(sentences, vocab) -> TaggingObjective:
    return TaggingObjective(TASK, sentences, sentences, vocab, block_size=16, batch_size=len(sentences),
                            eval_batch_size=8)


def fixed_batch(objective: TaggingObjective):
    return objective.batch(torch.Generator().manual_seed(0))


def hand_kl(teacher_scores, student_scores, lengths, temperature) -> float:
    """Mean over real characters of sum_k p log(p / q), p and q the softmax of the scores / T, in plain Python."""
    def softmax(row):
        exps = [math.exp(s / temperature) for s in row]
        return [e / sum(exps) for e in exps]

    total, count = 0.0, 0
    for b, n in enumerate(lengths):
        for t in range(n):
            p, q = softmax(teacher_scores[b][t]), softmax(student_scores[b][t])
            total += sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))
            count += 1
    return total / count


@pytest.mark.parametrize("alpha, temperature", [(1.0, 1.0), (0.3, 2.0)])
def test_the_loss_is_alpha_t2_kl_plus_the_gold_loss(tmp_path, alpha, temperature):
    sentences = write_cws(tmp_path / "train.txt", OTHER_WORDS)
    vocab = CharVocab.build(TEXTS)
    student, teacher = tagger(vocab, seed=1).eval(), tagger(vocab, seed=2).eval()
    with torch.no_grad():  # heads far from their near-uniform initialisation, so that the two models disagree
        student.head.proj.weight.normal_(std=0.5)
        teacher.head.proj.weight.normal_(std=0.5)
    objective = objective_for(sentences, vocab)
    ids, lengths, tags = batch = fixed_batch(objective)
    distill = Distill(objective, student, teacher, vocab_map(vocab, vocab), alpha=alpha, temperature=temperature)
    loss, n_chars = distill.loss(student, batch)
    gold, gold_chars = objective.loss(student, batch)
    with torch.no_grad():
        kl = hand_kl(teacher(ids, lengths).tolist(), student(ids, lengths).tolist(), lengths.tolist(), temperature)
    assert n_chars == gold_chars == sum(len(t) for t in TEXTS)
    assert distill.last_kl == pytest.approx(kl, rel=1e-5)
    assert kl > 0.05  # two different random models: the term is not trivially zero
    assert loss.item() == pytest.approx(alpha * temperature ** 2 * kl + (1 - alpha) * gold.item(), rel=1e-5)


def test_alpha_zero_is_the_plain_loss(tmp_path):
    sentences = write_cws(tmp_path / "train.txt", OTHER_WORDS)
    vocab = CharVocab.build(TEXTS)
    student, teacher = tagger(vocab, seed=1).eval(), tagger(vocab, seed=2).eval()
    objective = objective_for(sentences, vocab)
    batch = fixed_batch(objective)
    loss, n_chars = Distill(objective, student, teacher, vocab_map(vocab, vocab), alpha=0.0,
                            temperature=3.0).loss(student, batch)
    plain, plain_chars = objective.loss(student, batch)
    assert torch.equal(loss, plain) and n_chars == plain_chars


def test_kl_of_a_toy_pair_and_its_mask():
    log_p = torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]).log()  # (B=1, T=3, K=2)
    log_q = torch.tensor([[[0.25, 0.75], [0.5, 0.5], [0.6, 0.4]]]).log()
    keep = torch.tensor([[True, True, False]])  # the third position is padding
    by_hand = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
               + 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)) / 2
    assert kl_divergence(log_p, log_q, keep).item() == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_crf_marginals_equal_the_sum_over_every_path(temperature):
    torch.manual_seed(0)
    crf = CRF(*transition_masks(BMES, "BMES"))
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    emissions, lengths = torch.randn(2, 4, 4), torch.tensor([4, 3])
    marginals = crf.marginals(emissions, lengths, temperature=temperature)
    start, trans, end = crf.scores()
    for b, n in enumerate(lengths.tolist()):
        expected, total = torch.zeros(4, 4, dtype=torch.float64), 0.0
        for path in itertools.product(range(4), repeat=n):
            score = start[path[0]] + end[path[-1]] + sum(emissions[b, t, k] for t, k in enumerate(path))
            score = score + sum(trans[i, j] for i, j in zip(path, path[1:]))
            weight = math.exp(score.item() / temperature)
            total += weight
            for t, k in enumerate(path):
                expected[t, k] += weight
        assert torch.allclose(marginals[b].double(), expected / total, atol=1e-5)
    assert marginals[1, 0, 1] == marginals[1, 0, 2] == 0  # BMES: no word starts with M or E
    assert torch.allclose(marginals.sum(-1), torch.tensor([[1.0] * 4, [1.0] * 3 + [0.0]]))


def test_tag_distribution_of_a_crf_student_trains_its_transitions():
    vocab = CharVocab.build(TEXTS)
    student = tagger(vocab, seed=1, crf=True)
    ids = torch.tensor([vocab.encode(TEXTS[0])])
    lengths = torch.tensor([len(TEXTS[0])])
    log_q = tag_distribution(student.head, student(ids, lengths), lengths, 2.0, differentiable=True)
    log_q[0, :, 0].sum().backward()
    assert student.head.crf.trans.grad.abs().sum() > 0 and student.head.proj.weight.grad.abs().sum() > 0


def test_vocab_map_sends_each_character_to_the_teachers_id():
    student, teacher = CharVocab.build(["天安门北京X"]), CharVocab.build(["北京天安门我们"])
    mapped = vocab_map(student, teacher)
    for ch in "天安门北京":
        assert mapped[student.stoi[ch]] == teacher.stoi[ch]
    assert mapped[student.stoi["X"]] == UNK_ID and mapped[UNK_ID] == UNK_ID


def train(model, loss_of_batch, steps: int, lr: float = 1e-2) -> None:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = loss_of_batch()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_a_student_reaches_the_teachers_tags_not_the_gold_ones(tmp_path):
    teacher_sentences = write_cws(tmp_path / "teacher.txt", TEACHER_WORDS)
    other_sentences = write_cws(tmp_path / "other.txt", OTHER_WORDS)
    teacher_vocab = CharVocab.build(TEXTS)
    student_vocab = CharVocab.build(TEXTS + ["的了吗"])  # other ids than the teacher's
    teacher = tagger(teacher_vocab, seed=1, crf=True)
    teacher_objective = objective_for(teacher_sentences, teacher_vocab)
    teacher_batch = fixed_batch(teacher_objective)
    train(teacher, lambda: teacher_objective.loss(teacher, teacher_batch)[0], steps=60)
    teacher_spans = tag_texts(teacher, teacher_vocab, TEXTS, batch_size=8, overlap=4)
    assert [spans_to_words(t, s) for t, s in zip(TEXTS, teacher_spans)] == TEACHER_WORDS

    # An hourglass student, from scratch, told the other segmentation by its gold file and alpha = 1.
    student = tagger(student_vocab, seed=3, n_layers=2, shorten=2, shorten_layers=[0, 1, 1])
    objective = objective_for(other_sentences, student_vocab)
    batch = fixed_batch(objective)
    distill = Distill(objective, student, teacher, vocab_map(student_vocab, teacher_vocab), alpha=1.0,
                      temperature=2.0)
    first_kl = distill.loss(student, batch)[0].item()
    train(student, lambda: distill.loss(student, batch)[0], steps=80)
    student_spans = tag_texts(student, student_vocab, TEXTS, batch_size=8, overlap=4)
    assert [spans_to_words(t, s) for t, s in zip(TEXTS, student_spans)] == TEACHER_WORDS
    assert distill.last_kl < first_kl / 4


def test_finetune_distill_from_a_teacher(tiny_segmenter, mc_model, tmp_path):
    data = tmp_path / "train.txt"
    data.write_text("".join(" ".join(words) + "\n" for words in TEACHER_WORDS * 4), encoding="utf-8")
    files = ["--task", "cws", "--train", str(data), "--dev", str(data), "--test", str(data), "--init", "scratch"]
    student = [*files, *TINY, "--max-steps", "3", "--distill-from", str(tiny_segmenter)]
    finetune.main([*student, "--out", str(tmp_path / "student"), "--distill-alpha", "0.7",
                   "--distill-temperature", "2"])
    results = json.loads((tmp_path / "student" / "results.json").read_text())
    assert results["toolbox"]["distill_from"] == str(tiny_segmenter)
    assert results["toolbox"]["distill_alpha"] == 0.7 and results["steps"] == 3
    with pytest.raises(CharformerError, match="shorter than the student's 32"):  # the teacher reads 16
        finetune.main([*student, "--out", str(tmp_path / "wide"), "--block-size", "32"])
    with pytest.raises(CharformerError, match="distill_alpha"):
        finetune.main([*student, "--out", str(tmp_path / "bad"), "--distill-alpha", "1.5"])
    with pytest.raises(CharformerError, match="multi-criteria teacher or student"):
        finetune.main([*files, *TINY, "--max-steps", "3", "--out", str(tmp_path / "mc"), "--distill-from",
                       str(mc_model)])
