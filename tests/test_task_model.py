"""Task models: windowing of long inputs, padding-free losses, freezing, task checkpoints."""

import json

import pytest
import torch
from hypothesis import given, settings, strategies as st

from charformer.errors import CharformerError
from charformer.model import ModelConfig
from charformer.tasks import predict
from charformer.tasks.checkpoint import load_task_checkpoint, save_task_checkpoint
from charformer.tasks.model import build_task_model, freeze
from charformer.tasks.objectives import BUCKET_BATCHES, TaggingObjective
from charformer.tasks.predict import chunk_batch, decode_groups, predict_tags
from charformer.tasks.readers import Sentence
from charformer.tasks.schemes import tag_set
from charformer.tasks.windows import clip_spans, plan_windows, training_pieces
from charformer.train import TrainConfig, make_optimizer
from charformer.vocab import UNK_ID, CharVocab

BLOCK = 16


def tagger(crf=False, **cfg):
    torch.manual_seed(0)
    body = ModelConfig(**{**dict(vocab_size=50, block_size=BLOCK, n_layers=2, n_heads=2, d_model=32, causal=False), **cfg})
    task = {"task": "ner", "scheme": "BIOES", "tags": tag_set("BIOES", ["PER", "ORG"]), "crf": crf, "head_dropout": 0.0,
            "overlap": 4}
    return build_task_model(body, task).eval(), task


def classifier(pooling="mean"):
    torch.manual_seed(0)
    body = ModelConfig(vocab_size=50, block_size=BLOCK, n_layers=1, n_heads=2, d_model=32, causal=False)
    return build_task_model(body, {"task": "classify", "labels": ["neg", "pos"], "pooling": pooling, "head_dropout": 0.0}).eval()


@settings(deadline=None)  # timing varies on a shared machine; the property does not
@given(st.integers(0, 120), st.integers(1, 20), st.data())
def test_windows_partition_every_sentence(n, size, data):
    overlap = data.draw(st.integers(0, size - 1))
    windows = plan_windows(n, size, overlap)
    kept = [i for w in windows for i in range(w.keep_start, w.keep_end)]
    assert kept == list(range(n))  # every character kept exactly once, in order
    for w in windows:
        assert w.end - w.start <= size and w.start <= w.keep_start <= w.keep_end <= w.end


def test_training_pieces_cut_at_span_boundaries():
    spans = [(0, 3, "A"), (3, 5, "B"), (7, 15, "C")]
    # the furthest cut within reach that splits no span: before 6 (an O), before 7; then the 8-character C
    # cannot fit and is cut where it must be
    assert training_pieces(spans, 16, 6) == [(0, 6), (6, 7), (7, 13), (13, 16)]
    assert clip_spans(spans, 7, 13) == [(0, 6, "C")] and clip_spans(spans, 2, 6) == [(0, 1, "A"), (1, 3, "B")]


def test_long_sentences_get_exactly_one_tag_per_character():
    model, task = tagger()
    g = torch.Generator().manual_seed(1)
    sentences = [torch.randint(7, 50, (n,), generator=g).tolist() for n in (0, 1, BLOCK, BLOCK + 1, 5 * BLOCK + 3)]
    with torch.no_grad():
        paths = predict_tags(model, sentences, batch_size=3, overlap=task["overlap"])
        assert [len(p) for p in paths] == [len(s) for s in sentences]
        # a sentence that fits one block is decoded from one plain forward pass
        ids = torch.tensor([sentences[2]])
        assert paths[2] == model.head.decode(model(ids, torch.tensor([BLOCK])), torch.tensor([BLOCK]))[0]


def test_decode_groups_bound_padded_positions():
    # 3 x 3 = 9 fits a budget of 10, 4 x 5 does not; 2 x 100 does not either, and 100 alone exceeds it
    assert decode_groups([2, 2, 3, 5, 100], 10) == [range(0, 3), range(3, 4), range(4, 5)]
    assert decode_groups([4], 1) == [range(0, 1)] and decode_groups([], 10) == []


def test_decoding_in_small_groups_gives_the_same_paths(monkeypatch):
    model, task = tagger()
    g = torch.Generator().manual_seed(2)
    sentences = [torch.randint(7, 50, (n,), generator=g).tolist() for n in (5, 0, 17, 3, 40, 9, 3)]
    with torch.no_grad():
        together = predict_tags(model, sentences, batch_size=4, overlap=task["overlap"])
        monkeypatch.setattr(predict, "DECODE_POSITIONS", 12)  # groups of one or two sentences
        apart = predict_tags(model, sentences, batch_size=4, overlap=task["overlap"])
    assert apart == together and [len(p) for p in apart] == [len(s) for s in sentences]


def test_tagging_batches_are_length_bucketed_and_every_piece_equally_likely():
    vocab = CharVocab.build(["a"])
    # 64 one-word sentences, four of each length 1..16: with batches of 2, two buckets (lengths 1-8, 9-16)
    train = [Sentence("a" * (1 + i % 16), ((0, 1 + i % 16, ""),), f"t:{i}") for i in range(64)]
    objective = TaggingObjective({"task": "cws", "scheme": "BMES", "tags": ["B", "M", "E", "S"], "overlap": 4},
                                 train, train[:1], vocab, block_size=BLOCK, batch_size=2, eval_batch_size=8)
    assert len(objective.buckets) == 64 // (BUCKET_BATCHES * 2) and objective.mean_length == 8.5
    g = torch.Generator().manual_seed(0)
    draws = torch.zeros(17)
    for _ in range(4000):
        ids, lengths, tags = objective.batch(g)
        assert ids.shape == (2, int(lengths.max())) and (lengths.min() - 1) // 8 == (lengths.max() - 1) // 8
        draws.index_add_(0, lengths, torch.ones(len(lengths)))  # a length drawn twice counts twice
    # Each length equally likely: 8,000 draws over 16 lengths, 500 each in expectation (sd ~22).
    assert draws.sum() == 8000 and draws[0] == 0 and draws[1:].min() > 500 - 90 and draws[1:].max() < 500 + 90


def test_tagging_loss_is_the_character_sum_over_a_constant():
    model, task = tagger()
    vocab = CharVocab.build(["abc"])
    train = [Sentence("ab" * n, ((0, 2 * n, "PER"),), f"t:{n}") for n in (1, 2, 5)]  # mean piece length 16/3
    objective = TaggingObjective(task, train, train, vocab, block_size=BLOCK, batch_size=2, eval_batch_size=8)
    ids, lengths, tags = objective.batch(torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss, n_chars = objective.loss(model, (ids, lengths, tags))
        mean = model(ids, lengths, tags)
    assert n_chars == int(lengths.sum())
    torch.testing.assert_close(loss, mean * n_chars / (2 * 16 / 3))


@pytest.mark.parametrize("crf", [False, True])
def test_padded_batch_loss_equals_the_loss_over_real_characters(crf):
    model, task = tagger(crf=crf)
    lengths = [12, 5, 1]
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(7, 50, (n,), generator=g) for n in lengths]
    tags = [torch.randint(0, len(task["tags"]), (n,), generator=g) for n in lengths]
    ids = torch.zeros(3, 12, dtype=torch.long)
    padded_tags = torch.full((3, 12), 3)  # padding holds a real tag id: it must still not count
    for i, (s, t) in enumerate(zip(seqs, tags)):
        ids[i, : len(s)], padded_tags[i, : len(t)] = s, t
    with torch.no_grad():
        batch_loss = model(ids, torch.tensor(lengths), padded_tags)
        alone = [model(s[None], torch.tensor([len(s)]), t[None]) * len(s) for s, t in zip(seqs, tags)]
    torch.testing.assert_close(batch_loss, sum(alone) / sum(lengths), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_classifier_reads_long_texts_whole_and_ignores_padding(pooling):
    model = classifier(pooling)
    g = torch.Generator().manual_seed(3)
    texts = [torch.randint(7, 50, (n,), generator=g).tolist() for n in (40, 3)]  # 40 chars: 3 chunks of 15
    ids, lengths = chunk_batch(texts, BLOCK)
    assert ids.shape == (2, 3, BLOCK) and lengths.tolist() == [[16, 16, 11], [4, 0, 0]]
    with torch.no_grad():
        together = model(ids, lengths)
        for i, text in enumerate(texts):
            torch.testing.assert_close(together[i], model(*chunk_batch([text], BLOCK))[0], rtol=1e-5, atol=1e-5)
        # mean pooling weights every character once: a text cut into chunks differently changes nothing only if
        # the pooled sum is over characters, so check against a hand-made pooling of the hidden states
        if pooling == "mean":
            rows = ids[0][lengths[0] > 0]
            hidden = model.body.hidden_states(rows, lengths=lengths[0][lengths[0] > 0])
            chars = torch.cat([hidden[r, 1:n] for r, n in enumerate(lengths[0][lengths[0] > 0].tolist())])
            torch.testing.assert_close(together[0], model.head.proj(chars.mean(0)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec, frozen_prefixes", [
    ("body", ("body.",)),
    ("embeddings", ("body.tok_emb.",)),
    ("bottom:1", ("body.tok_emb.", "body.blocks.0.")),
    ("none", ()),
])
def test_freezing_really_freezes(spec, frozen_prefixes):
    model, task = tagger()
    model.train()
    freeze(model, spec)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.1))
    ids = torch.randint(7, 50, (2, BLOCK))
    model(ids, torch.tensor([BLOCK, 9]), torch.randint(0, 5, (2, BLOCK))).backward()
    opt.step()
    for name, p in model.named_parameters():
        if name.startswith(frozen_prefixes):
            assert torch.equal(p, before[name]), name
        elif not name.startswith("body.blocks.1.norm"):  # norms of the last block may barely move; matrices must
            assert not torch.equal(p, before[name]), name
    with pytest.raises(CharformerError, match="bottom:N"):
        freeze(model, "bottom:3")


def test_task_checkpoint_round_trip(tmp_path):
    model, task = tagger(crf=True)
    torch.nn.init.normal_(model.head.crf.trans)
    vocab = CharVocab(chr(0x4E00 + i) for i in range(50 - 7))
    save_task_checkpoint(tmp_path / "ck", model, vocab, task)
    loaded, vocab2, task2 = load_task_checkpoint(tmp_path / "ck")
    ids = torch.randint(7, 50, (2, BLOCK))
    lengths = torch.tensor([BLOCK, 7])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, lengths), model(ids, lengths), rtol=0, atol=0)
    assert torch.equal(loaded.head.crf.trans, model.head.crf.trans)
    assert vocab2 == vocab and task2 == task
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["task"]["scheme"] == "BIOES"


def test_ids_stay_aligned_with_characters_under_normalization():
    vocab = CharVocab.build(["(株)AB"], normalization="NFKC")
    # NFKC turns the full-width letters into A and B, and ㈱ into three characters "(株)": one id per character
    # is kept all the same, ㈱ reading as [UNK]
    assert vocab.encode_aligned("㈱ＡＢ") == [UNK_ID, vocab.stoi["A"], vocab.stoi["B"]]
    assert len(vocab.encode("㈱ＡＢ")) == 5
