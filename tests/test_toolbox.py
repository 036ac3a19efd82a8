"""The fine-tuning toolbox (charformer/finetuning), method by method, against hand-computed values on tiny models:
each test fails if its method did nothing."""

import math

import pytest
import torch
import torch.nn as nn

from charformer.finetuning.adversarial import Adversarial, pgd_step
from charformer.finetuning.augment import augment
from charformer.finetuning.averaging import EMA, Averaged, LastCheckpoints, swapped, trainable
from charformer.finetuning.cloze import ClozeClassifier, ClozeHead, encode_pattern
from charformer.finetuning.ewc import EWCPenalty, fisher_diagonal
from charformer.finetuning.rdrop import RDrop, symmetric_kl
from charformer.errors import CharformerError
from charformer.model import ModelConfig
from charformer.tasks.model import build_task_model
from charformer.tasks.predict import chunk_batch
from charformer.tasks.readers import Document, Sentence
from charformer.tasks.schemes import spans_to_words
from charformer.vocab import MASK_ID, CharVocab


class TaggingLoss:
    """The smallest objective: a tagger's mean loss over a fixed batch."""

    metric, higher_is_better = "f1", True

    def loss(self, model, batch):
        ids, lengths, tags = batch
        return model(ids, lengths, tags), int(lengths.sum())


def tiny_tagger(dropout=0.0, head_dropout=0.0):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30, block_size=16, n_layers=2, n_heads=2, d_model=16, dropout=dropout, causal=False)
    task = {"task": "ner", "tags": ["O", "B-X", "I-X"], "scheme": "BIO", "crf": False, "head_dropout": head_dropout}
    return build_task_model(cfg, task)


def tagging_batch():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(7, 30, (3, 10), generator=gen)
    lengths = torch.tensor([10, 7, 4])
    ids[1, 7:], ids[2, 4:] = 0, 0
    tags = torch.randint(0, 3, (3, 10), generator=gen)
    return ids, lengths, tags


def clean_gradient(model, batch):
    """The loss and dL/de, e the embedding output (B, T, C), computed by hand."""
    captured = {}

    def keep(module, inputs, out):
        captured["e"] = out.detach().requires_grad_()
        return captured["e"]

    handle = model.body.tok_emb.register_forward_hook(keep)
    loss = model(*batch)
    handle.remove()
    (g,) = torch.autograd.grad(loss, captured["e"])
    return loss.item(), g


def test_fgm_raises_the_loss_by_eps_times_the_gradient_norm():
    model, batch = tiny_tagger().eval(), tagging_batch()
    loss, g = clean_gradient(model, batch)
    eps = 0.05
    expected = eps * g.flatten(1).norm(dim=1).sum().item()  # first order: <g, r> with r_b = eps g_b / ||g_b||
    total, _ = Adversarial(TaggingLoss(), model.body.tok_emb, eps=eps).loss(model, batch)
    change = total.item() - 2 * loss  # total = L(e) + L(e + r)
    assert expected > 1e-3
    assert change == pytest.approx(expected, rel=0.05)


def test_pgd_steps_stay_in_the_eps_ball_and_raise_the_loss():
    gen = torch.Generator().manual_seed(0)
    delta = torch.zeros(4, 5, 3)
    for _ in range(10):
        delta = pgd_step(delta, torch.randn(4, 5, 3, generator=gen), alpha=0.7, eps=1.0)
        norms = delta.flatten(1).norm(dim=1)
        assert (norms <= 1.0 + 1e-5).all()
    assert norms.min() > 0.5  # steps of 0.7 in random directions leave the centre
    inside = pgd_step(torch.zeros(2, 3), torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]]), alpha=0.1, eps=1.0)
    assert torch.allclose(inside, torch.tensor([[0.06, 0.08, 0.0], [0.0, 0.0, 0.1]]))  # inside the ball: unprojected

    model, batch = tiny_tagger().eval(), tagging_batch()
    clean = model.body.tok_emb(batch[0]).detach()
    adversarial = Adversarial(TaggingLoss(), model.body.tok_emb, eps=0.3, steps=4)
    seen = []  # hooks run in order: this one sees the perturbed embeddings
    model.body.tok_emb.register_forward_hook(lambda m, i, out: seen.append(out.detach() - clean))
    total, _ = adversarial.loss(model, batch)
    assert len(seen) == 5 and seen[0].abs().max() == 0  # the clean pass, then 4 perturbed ones
    for delta in seen[1:]:
        assert (delta.flatten(1).norm(dim=1) <= 0.3 + 1e-5).all() and delta.abs().max() > 0
    loss, _ = clean_gradient(model, batch)
    assert total.item() - loss > loss  # the adversarial loss is above the clean one


def test_symmetric_kl_by_hand_and_masked():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    kl_pq = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    kl_qp = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert symmetric_kl(p.log(), q.log()).item() == pytest.approx((kl_pq + kl_qp) / 2, rel=1e-5)
    a, b = torch.stack([p.log(), p.log()]), torch.stack([q.log(), p.log()])
    assert symmetric_kl(a, b).item() == pytest.approx((kl_pq + kl_qp) / 4, rel=1e-5)
    assert symmetric_kl(a, b, keep=torch.tensor([False, True])).item() == 0


def test_rdrop_kl_is_zero_without_dropout_and_positive_with():
    batch = tagging_batch()
    for dropout, positive in ((0.0, False), (0.3, True)):
        model = tiny_tagger(dropout=dropout, head_dropout=dropout).train()
        rdrop = RDrop(TaggingLoss(), model, alpha=2.0)
        total, _ = rdrop.loss(model, batch)
        if positive:
            assert rdrop.last_kl > 1e-4
        else:
            assert rdrop.last_kl == pytest.approx(0, abs=1e-7)
            assert total.item() == pytest.approx(model(*batch).item(), rel=1e-6)


def test_ema_equals_the_hand_computed_average():
    layer = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(2.0)
    ema = EMA(trainable(layer), decay=0.2)
    shadow = 2.0
    for t, value in enumerate([4.0, 0.0, 10.0]):
        with torch.no_grad():
            layer.weight.fill_(value)
        ema.update()
        d = min(0.2, (1 + t) / (10 + t))  # 0.1, then 2/11 ~ 0.18, then the decay 0.2
        shadow = d * shadow + (1 - d) * value
    assert ema.weights()["weight"].item() == pytest.approx(shadow)
    assert shadow == pytest.approx(0.2 * (2 / 11 * (0.1 * 2 + 0.9 * 4) + 9 / 11 * 0) + 0.8 * 10)


def test_average_of_the_last_checkpoints_is_their_mean_and_is_what_evaluation_sees():
    layer = nn.Linear(2, 1, bias=False)
    averager = LastCheckpoints(trainable(layer), n=2)

    class Probe:
        def evaluate(self, model):
            return {"w": model.weight[0, 0].item()}

    averaged = Averaged(Probe(), averager)
    for value in (1.0, 3.0, 8.0):
        with torch.no_grad():
            layer.weight.fill_(value)
        seen = averaged.evaluate(layer)["w"]
    assert seen == pytest.approx((3.0 + 8.0) / 2)  # the last two snapshots
    assert layer.weight[0, 0].item() == 8.0  # the raw weights come back after evaluation
    with swapped(averager.params, averager.weights()):
        assert torch.allclose(layer.weight, torch.full((1, 2), 5.5))


def test_ewc_penalty_by_hand_and_zero_at_the_anchor():
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0]]))
    params = trainable(layer)
    xs = [torch.tensor([[3.0, 1.0]]), torch.tensor([[1.0, 2.0]])]
    fisher = fisher_diagonal(params, (lambda x=x: layer(x).sum() for x in xs))  # gradient of w.x is x
    assert torch.allclose(fisher["weight"], torch.tensor([[(9 + 1) / 2, (1 + 4) / 2]]))
    penalty = EWCPenalty(params, fisher, lam=4.0)
    assert penalty().item() == 0
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, 0.0]]))
    assert penalty().item() == pytest.approx(4.0 / 2 * (5.0 * 1.0**2 + 2.5 * 2.0**2))
    penalty().backward()  # differentiable in the weights: 4 * F * (w - w*)
    assert torch.allclose(layer.weight.grad, torch.tensor([[4 * 5.0 * 1.0, 4 * 2.5 * 2.0]]))


def test_augmentations_keep_labels_consistent():
    docs = [Document("房间很干净", "1", "a:1"), Document("服务很差劲啊", "0", "a:2"), Document("喜欢", "1", "a:3")]
    out, made = augment("classify", docs, "delete,swap,insert,mix", seed=0)
    assert out[:3] == docs and made == {"delete": 3, "swap": 3, "insert": 3, "mix": 3}
    new = out[3:]
    for d, orig in zip(new[3:6], docs):  # swaps: the same characters, the same label
        assert sorted(d.text) == sorted(orig.text) and d.label == orig.label
    for d, orig in zip(new[6:9], docs):  # insertions: the original is a subsequence
        it = iter(d.text)
        assert len(d.text) > len(orig.text) and all(c in it for c in orig.text) and d.label == orig.label
    for d, orig in zip(new[9:], docs):  # mixes: two texts of the same label
        rest = d.text[len(orig.text):]
        assert d.text.startswith(orig.text) and rest in {x.text for x in docs if x.label == orig.label}

    sentences = [Sentence("张三在北京大学工作", ((0, 2, "NAME"), (3, 7, "ORG")), "n:1"),
                 Sentence("李四是经理", ((0, 2, "NAME"), (3, 5, "TITLE")), "n:2"), Sentence("好", (), "n:3")]
    entities = {"NAME": {"张三", "李四"}, "ORG": {"北京大学"}, "TITLE": {"经理"}}
    out, made = augment("ner", sentences * 5, "entity", seed=1)
    assert made == {"entity": 10}  # the sentence without an entity gives none
    replaced = {s.text for s in out[15:]}
    assert "李四在北京大学工作" in replaced  # a replacement happened
    def between(s):  # the text outside the entities
        cuts = [0, *(x for a, b, _ in s.spans for x in (a, b)), len(s.text)]
        return [s.text[cuts[i]:cuts[i + 1]] for i in range(0, len(cuts), 2)]

    for s, orig in zip(out[15:], [s for s in sentences * 5 if s.spans]):
        assert [s.text[a:b] in entities[kind] for a, b, kind in s.spans] == [True, True]
        assert [kind for _, _, kind in s.spans] == [kind for _, _, kind in orig.spans]
        assert between(s) == between(orig)

    words = [Sentence("中国人民站起来了", ((0, 2, ""), (2, 4, ""), (4, 5, ""), (5, 7, ""), (7, 8, "")), "c:1"),
             Sentence("我们", ((0, 2, ""),), "c:2")]
    vocabulary = {"中国", "人民", "站", "起来", "了", "我们"}
    out, made = augment("cws", words, "concat,split", seed=2)
    assert made == {"concat": 2, "split": 2}  # the one-word sentence cannot be split
    for s in out[2:]:
        pieces = spans_to_words(s.text, s.spans)
        assert "".join(pieces) == s.text and set(pieces) <= vocabulary
    with pytest.raises(CharformerError, match="entity is not for --task cws"):
        augment("cws", words, "entity", seed=0)


def cloze_setup(causal: bool, pattern: str):
    vocab = CharVocab.build(["好差很总之。这家酒店干净安静"])
    cfg = ModelConfig(vocab_size=len(vocab), block_size=16, n_layers=1, n_heads=2, d_model=16, causal=causal)
    task = {"task": "classify", "labels": ["0", "1"]}
    cloze = encode_pattern(pattern, {"0": "差", "1": "好"}, vocab)
    torch.manual_seed(0)
    body = build_task_model(cfg, {**task, "pooling": "mean", "head_dropout": 0.0}).body.eval()
    return vocab, body, ClozeClassifier(body, ClozeHead(task["labels"], cloze)).eval(), cloze


def test_cloze_scores_the_verbalisers_at_the_blank_by_hand():
    vocab, body, model, cloze = cloze_setup(False, "{text}总之很[MASK]。")
    assert cloze["prefix_ids"] == [] and cloze["suffix_ids"] == vocab.encode("总之很") + [MASK_ID] + vocab.encode("。")
    assert model.chunk_block == 16 - 5
    text = vocab.encode("这家酒店干净")
    row = torch.tensor([text + cloze["suffix_ids"]])
    logp = body(row)[0, len(text) + 3].log_softmax(-1)  # the blank
    expected = torch.stack([logp[vocab.encode("差")[0]], logp[vocab.encode("好")[0]]])
    ids, lengths = chunk_batch([text], model.chunk_block)
    with torch.no_grad():
        assert torch.allclose(model(ids, lengths)[0], expected, atol=1e-5)
        # a text of two chunks: the mean of its chunks' scores
        long = vocab.encode("这家酒店干净安静这家酒店干净安静")
        ids, lengths = chunk_batch([long], model.chunk_block)
        parts = [model(*chunk_batch([long[a:b]], model.chunk_block))[0] for a, b in ((0, 10), (10, 16))]
        assert lengths.tolist() == [[11, 7]]
        assert torch.allclose(model(ids, lengths)[0], (parts[0] + parts[1]) / 2, atol=1e-5)


def test_cloze_with_a_causal_lm_scores_the_continuation_by_hand():
    vocab, body, model, cloze = cloze_setup(True, "{text}很[MASK]")
    text = vocab.encode("酒店干净")
    prefix_row = torch.tensor([text + vocab.encode("很")])
    logp = body(prefix_row)[0, -1].log_softmax(-1)  # the next character after 很
    ids, lengths = chunk_batch([text], model.chunk_block)
    with torch.no_grad():
        scores = model(ids, lengths)[0]
    assert torch.allclose(scores, torch.stack([logp[vocab.encode("差")[0]], logp[vocab.encode("好")[0]]]), atol=1e-5)
    with pytest.raises(CharformerError, match="after {text}"):
        cloze_setup(True, "[MASK]：{text}")
    with pytest.raises(CharformerError, match="exactly one {text} and one"):
        cloze_setup(False, "{text}很好")
