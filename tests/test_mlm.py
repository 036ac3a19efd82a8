"""Masked-LM pretraining: BERT masking proportions, loss only on chosen positions, fixed evaluation masking,
line packing, and pretrain.py --objective mlm end to end."""

import json

import numpy as np
import pytest
import torch

import pretrain
from charformer.data import IGNORE_INDEX, line_segments, packed_blocks, random_packed
from charformer.errors import CharformerError
from charformer.objectives import MaskedLM, mask_for_mlm
from charformer.vocab import MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, CharVocab
from tests.helpers import TINY_MODEL

N_SPECIAL = len(SPECIAL_TOKENS)
TINY = [*TINY_MODEL, "--batch-size", "4", "--device", "cpu",
        "--log-interval", "1", "--warmup-steps", "2", "--objective", "mlm"]


def test_masking_proportions_and_specials_never_chosen():
    g = torch.Generator().manual_seed(0)
    vocab_size = 5000
    ids = torch.randint(N_SPECIAL, vocab_size, (64, 512), generator=g)
    ids[:, ::10] = SEP_ID  # special tokens and padding sprinkled in: never to be chosen
    ids[:, -20:] = PAD_ID
    inputs, targets = mask_for_mlm(ids, g, vocab_size=vocab_size)
    chosen = targets != IGNORE_INDEX
    maskable = ids >= N_SPECIAL
    assert not chosen[~maskable].any() and torch.equal(inputs[~maskable], ids[~maskable])
    assert torch.equal(targets[chosen], ids[chosen])
    share = chosen.sum().item() / maskable.sum().item()
    assert share == pytest.approx(0.15, abs=0.005)  # about 26,000 positions: 4 standard deviations ~ 0.4%
    n = chosen.sum().item()
    masked = (inputs[chosen] == MASK_ID).sum().item() / n
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n
    replaced = ((inputs[chosen] != MASK_ID) & (inputs[chosen] != ids[chosen])).sum().item() / n
    assert masked == pytest.approx(0.8, abs=0.015) and kept == pytest.approx(0.1, abs=0.01)
    assert replaced == pytest.approx(0.1, abs=0.01)
    assert (inputs[chosen] != MASK_ID).logical_and(inputs[chosen] < N_SPECIAL).sum() == 0  # random = characters
    assert torch.equal(inputs[maskable & ~chosen], ids[maskable & ~chosen])


def test_every_row_with_characters_gets_a_target():
    g = torch.Generator().manual_seed(1)
    ids = torch.full((200, 4), PAD_ID)
    ids[:, 0] = 9  # one character per row: 15% would leave most rows without a target
    ids[0] = PAD_ID  # a row of padding only stays without one
    _, targets = mask_for_mlm(ids, g, vocab_size=20)
    assert (targets[1:, 0] == 9).all() and (targets[0] == IGNORE_INDEX).all()


class LogitsModel(torch.nn.Module):
    """Stands in for a transformer: returns fixed logits, so the gradient shows which positions the loss reads."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, ids, lengths=None, select=None):
        logits = self.logits[: ids.shape[0], : ids.shape[1]]
        return logits if select is None else logits[select]


def test_loss_reads_only_the_chosen_positions_and_eval_masking_is_fixed():
    vocab = CharVocab("abcdefghij")
    train = np.arange(N_SPECIAL, N_SPECIAL + 10).repeat(20).astype(np.uint16)
    objective = MaskedLM(train, train[:100], vocab, block_size=16, batch_size=4, eval_batches=0)
    inputs, targets, lengths = objective.batch(torch.Generator().manual_seed(0))
    model = LogitsModel(torch.randn(4, 16, len(vocab)))
    loss, n_chars = objective.loss(model, (inputs, targets, lengths))
    loss.backward()
    read = model.logits.grad.abs().sum(-1) > 0
    assert torch.equal(read, targets != IGNORE_INDEX) and n_chars == 64
    expected = torch.nn.functional.cross_entropy(model.logits[read], targets[read])
    torch.testing.assert_close(loss, expected)

    again = MaskedLM(train, train[:100], vocab, block_size=16, batch_size=4, eval_batches=0)
    for a, b in zip(objective.val_batches, again.val_batches):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    with torch.no_grad():
        assert objective.evaluate(model) == objective.evaluate(model)
        assert objective.evaluate(model)["chars"] == sum(int((t != IGNORE_INDEX).sum()) for _, t, _ in objective.val_batches)


def test_lines_are_packed_whole_with_sep():
    vocab = CharVocab("春眠不觉晓处闻啼鸟")
    text = "春眠\n\n不觉晓\n处处闻啼鸟春眠不觉晓\n鸟\n"
    segments = line_segments(text, vocab, max_len=6)
    assert [vocab.decode(s) for s in segments] == ["春眠", "不觉晓", "处处闻啼鸟春", "眠不觉晓", "鸟"]  # long line cut
    blocks = packed_blocks(segments, 8)
    assert [vocab.decode(b, keep_special=True) for b in blocks] == ["春眠[SEP]不觉晓", "处处闻啼鸟春", "眠不觉晓[SEP]鸟"]
    ids, lengths = random_packed(segments, 8, 16, torch.Generator().manual_seed(0))
    assert ids.shape == (16, 8) and (lengths <= 8).all()
    for row, n in zip(ids, lengths):
        assert (row[n:] == PAD_ID).all() and (row[:n] != PAD_ID).all()


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"第{i}行：春眠不觉晓，处处闻啼鸟。To be, or not to be.\n" for i in range(80)), encoding="utf-8")
    return path


@pytest.mark.parametrize("packing", ["windows", "lines"])
def test_pretrain_mlm_end_to_end(tmp_path, corpus, packing):
    out = tmp_path / packing
    assert pretrain.main(["--data", str(corpus), "--out", str(out), "--max-steps", "20", "--eval-interval", "10",
                          "--block-size", "32", "--packing", packing, *TINY]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["val_bpc"] is None and results["sample"] is None and results["objective"] == "mlm"
    assert 0 <= results["val_mlm_accuracy"] <= 1 and results["val_loss"] < 3.8  # uniform over ~45 chars: 3.8
    meta = json.loads((out / "best" / "config.json").read_text())
    assert meta["model"]["causal"] is False


def test_pretrain_mlm_reads_segmented_text_and_refuses_contradictions(tmp_path):
    seg = tmp_path / "seg.txt"
    seg.write_text("".join(f"中国 人民 第{i} 行 站 起来 了\n" for i in range(60)), encoding="utf-8")
    out = tmp_path / "seg"
    pretrain.main(["--data", str(seg), "--data-format", "cws", "--packing", "lines", "--out", str(out),
                   "--max-steps", "2", "--block-size", "16", *TINY])
    vocab = json.loads((out / "best" / "vocab.json").read_text())
    assert " " not in vocab["chars"]  # the separators are gone
    with pytest.raises(CharformerError, match="needs --causal false"):
        pretrain.main(["--data", str(seg), "--out", str(tmp_path / "x"), "--causal", "true", *TINY])
    with pytest.raises(CharformerError, match="--packing lines is for --objective mlm"):
        pretrain.main(["--data", str(seg), "--out", str(tmp_path / "y"), "--packing", "lines"])
