"""Checkpoints: identical logits after a round trip, atomic replacement, clear refusals."""

import json

import pytest
import torch

from charformer.checkpoint import atomic_dir, load_checkpoint, save_checkpoint
from charformer.errors import CharformerError
from charformer.vocab import CharVocab
from tests.helpers import tiny_model


def _vocab_of_size(n):
    return CharVocab(chr(0x4E00 + i) for i in range(n - 7))


def test_save_load_gives_identical_logits(tmp_path):
    model = tiny_model()
    vocab = _vocab_of_size(model.cfg.vocab_size)
    save_checkpoint(tmp_path / "ck", model, model.cfg, vocab)
    loaded, vocab2, meta = load_checkpoint(tmp_path / "ck")
    x = torch.randint(0, 50, (2, 20))
    assert torch.equal(model(x), loaded(x))
    assert vocab2 == vocab and meta["model"]["vocab_size"] == 50
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors", "vocab.json"]


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    model = tiny_model()
    vocab = _vocab_of_size(50)
    save_checkpoint(tmp_path / "ck", model, model.cfg, vocab)
    before = (tmp_path / "ck" / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "ck") as tmp:
            (tmp / "model.safetensors").write_bytes(b"half written")
            raise RuntimeError("crash while writing")
    assert (tmp_path / "ck" / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary left behind


def test_a_crash_between_renames_falls_back_to_old(tmp_path):
    model = tiny_model()
    save_checkpoint(tmp_path / "ck", model, model.cfg, _vocab_of_size(50))
    (tmp_path / "ck").rename(tmp_path / "ck.old")  # the state right after the first rename
    loaded, _, _ = load_checkpoint(tmp_path / "ck")
    x = torch.randint(0, 50, (1, 8))
    assert torch.equal(model(x), loaded(x))


def test_mismatched_vocab_config_and_weights_are_refused(tmp_path):
    model = tiny_model()
    save_checkpoint(tmp_path / "ck", model, model.cfg, _vocab_of_size(50))
    _vocab_of_size(60).save(tmp_path / "ck" / "vocab.json")
    with pytest.raises(CharformerError, match="vocabulary does not belong"):
        load_checkpoint(tmp_path / "ck")

    save_checkpoint(tmp_path / "ck2", model, model.cfg, _vocab_of_size(50))
    cfg = json.loads((tmp_path / "ck2" / "config.json").read_text())
    cfg["model"]["d_model"] = 64
    (tmp_path / "ck2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CharformerError, match="do not match"):
        load_checkpoint(tmp_path / "ck2")

    with pytest.raises(CharformerError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing")
    with pytest.raises(CharformerError, match="expects vocab_size"):
        save_checkpoint(tmp_path / "ck3", model, model.cfg, _vocab_of_size(40))
