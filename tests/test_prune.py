"""charformer.prune end to end on a tiny 2-layer segmenter: the layer whose removal costs least is dropped, the
F1 of the pruned model matches the importance measured for it, and the result is a 1-layer checkpoint. Head
pruning (`charformer.prune_heads`): the gate-gradient importance against an autograd check that scales the
output projection's columns instead, a model with heads cut out computing what the original computes with
those heads gated to 0, the per-layer head counts through a checkpoint round trip, and the command line; a
recovery by distillation brings the pruned model's tag distributions to the original's."""

import json

import pytest
import torch

import finetune
from charformer import prune
from charformer.checkpoint import load_checkpoint, read_meta, save_checkpoint
from charformer.data import pad_sequences
from charformer.errors import CharformerError
from charformer.finetuning.distill import kl_divergence, tag_distribution
from charformer.model import CharTransformer, ModelConfig
from charformer.prune import without_layers
from charformer.prune_heads import head_gates, head_importance, heads_to_drop, remove_heads
from charformer.tasks.checkpoint import load_task_checkpoint, save_task_checkpoint
from charformer.tasks.heads import real_positions
from charformer.vocab import CharVocab

WORDS = ["中国", "人民", "站", "起来", "了", "我们", "北京", "天安门", "，", "。"]


@pytest.fixture(scope="module")
def two_layer_segmenter(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    lines = [" ".join(WORDS[(i * 3 + j * 7) % len(WORDS)] for j in range(3 + i % 6)) for i in range(40)]
    data = root / "cws.txt"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    finetune.main(["--task", "cws", "--train", str(data), "--dev", str(data), "--test", str(data), "--init", "scratch",
                   "--out", str(root / "seg"), "--n-layers", "2", "--n-heads", "2", "--d-model", "32", "--block-size",
                   "16", "--batch-size", "8", "--max-steps", "8", "--lr", "3e-3", "--device", "cpu",
                   "--log-interval", "10", "--eval-interval", "1000"])
    return root / "seg", data


def test_prune_drops_the_least_important_layer(two_layer_segmenter, tmp_path):
    ckpt, data = two_layer_segmenter
    out = tmp_path / "pruned"
    files = ["--train", str(data), "--dev", str(data), "--test", str(data)]
    assert prune.main(["--ckpt", str(ckpt), *files, "--out", str(out), "--drop-layers", "1", "--recover-steps", "4",
                       "--repeats", "1"]) == 0
    r = json.loads((out / "results.json").read_text())
    importance = r["layer_importance_dev_f1_points"]
    assert len(importance) == 2 and r["dropped_layers"] == [importance.index(min(importance))]
    # dev == test here: the pruned model before recovery loses exactly the importance of the dropped layer
    lost = r["original"]["test_f1"] - r["pruned_before_recovery"]["test_f1"]
    assert lost == pytest.approx(min(importance), abs=0.02)
    model, _, task = load_task_checkpoint(out / "best")
    assert model.body.cfg.n_layers == 1 and task["task"] == "cws"
    per_block = sum(p.numel() for p in model.body.blocks[0].parameters())
    assert r["original"]["parameters"] - r["pruned"]["parameters"] == per_block
    assert r["pruned"]["model_bytes"] < r["original"]["model_bytes"]
    assert r["original"]["chars_per_s"] > 0 and r["speedup"] == pytest.approx(
        r["pruned"]["chars_per_s"] / r["original"]["chars_per_s"], rel=1e-2)

    with pytest.raises(CharformerError, match="--drop-layers must be between 0 and 1"):
        prune.main(["--ckpt", str(ckpt), *files, "--out", str(tmp_path / "x"), "--drop-layers", "2"])
    with pytest.raises(CharformerError, match="not empty"):
        prune.main(["--ckpt", str(ckpt), *files, "--out", str(out)])


def test_recovery_by_distillation_from_the_original(two_layer_segmenter, tmp_path):
    ckpt, data = two_layer_segmenter
    files = ["--train", str(data), "--dev", str(data), "--test", str(data), "--repeats", "1", "--lr", "3e-3"]
    out = tmp_path / "distilled"
    prune.main(["--ckpt", str(ckpt), *files, "--out", str(out), "--recover-steps", "30", "--distill-alpha", "1",
                "--distill-temperature", "2"])
    r = json.loads((out / "results.json").read_text())
    assert r["config"]["distill_alpha"] == 1.0 and r["config"]["distill_temperature"] == 2.0
    # alpha = 1: the pruned model learns the original's tag distributions alone, and comes far closer to them
    # than before recovery or after a recovery on the gold tags.
    original, vocab, _ = load_task_checkpoint(ckpt)
    pruned = load_task_checkpoint(out / "best")[0]
    before = without_layers(original, set(r["dropped_layers"]))
    rows = [vocab.encode(line.replace(" ", ""))[:16] for line in data.read_text(encoding="utf-8").splitlines()]
    ids, lengths = pad_sequences(rows)

    def kl_from_original(model) -> float:
        with torch.no_grad():
            log_p, log_q = (tag_distribution(m.head, m(ids, lengths), lengths, 1.0) for m in (original, model))
        return kl_divergence(log_p, log_q, real_positions(lengths, ids.shape[1])).item()

    plain = tmp_path / "plain"  # the same recovery on the gold tags alone
    prune.main(["--ckpt", str(ckpt), *files, "--out", str(plain), "--recover-steps", "30"])
    distilled = kl_from_original(pruned)
    assert distilled < kl_from_original(before) / 10
    assert distilled < kl_from_original(load_task_checkpoint(plain / "best")[0]) / 10
    with pytest.raises(CharformerError, match="distill_alpha"):
        prune.main(["--ckpt", str(ckpt), *files, "--out", str(tmp_path / "bad"), "--distill-alpha", "2"])


def _batches(n_batches=3):
    """Tagging batches (ids, lengths, tags) of right-padded rows for a model of vocabulary 20 and 3 tags."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        ids, tags = torch.randint(7, 20, (4, 10), generator=g), torch.randint(0, 3, (4, 10), generator=g)
        out.append((ids, torch.tensor([10, 7, 3, 9]), tags))
    return out


def _loss(model, batch):
    """Cross-entropy of a linear read-out of the hidden states over the real positions."""
    ids, lengths, tags = batch
    hidden = model.hidden_states(ids, lengths=lengths)  # (B, T, C)
    real = torch.arange(ids.shape[1])[None] < lengths[:, None]
    return torch.nn.functional.cross_entropy(model.lm_head(hidden)[real][:, :3], tags[real])


def _toy(**overrides) -> CharTransformer:
    torch.manual_seed(0)
    cfg = dict(vocab_size=20, block_size=16, n_layers=2, n_heads=4, d_model=32, causal=False)
    model = CharTransformer(ModelConfig(**{**cfg, **overrides}))
    with torch.no_grad():  # larger weights than the init, so that heads matter unequally
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.eval()


def test_head_importance_is_the_mean_absolute_gate_gradient():
    model = _toy()
    batches = _batches()
    importance = head_importance(model, model, lambda b: _loss(model, b), batches)
    # The same derivative another way: a head's gate scales its D columns of the output projection.
    d = model.cfg.head_dim
    expected = [torch.zeros(4) for _ in model.blocks]
    for batch in batches:
        scales = [torch.ones(4, requires_grad=True) for _ in model.blocks]
        originals = [block.attn.o_proj.weight for block in model.blocks]
        for block, scale, w in zip(model.blocks, scales, originals):
            del block.attn.o_proj.weight
            block.attn.o_proj.weight = w * scale.repeat_interleave(d)[None, :]  # (C, H*D)
        grads = torch.autograd.grad(_loss(model, batch), scales)
        for block, w in zip(model.blocks, originals):
            block.attn.o_proj.weight = w
        for total, grad in zip(expected, grads):
            total += grad.abs() / len(batches)
    for got, want in zip(importance, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    assert all(float(s.min()) > 0 for s in importance) and len({round(float(x), 6) for s in importance for x in s}) == 8


def test_heads_to_drop_ranks_normalised_scores_and_keeps_a_head_per_layer():
    # Normalised by their layer's L2 norm: layer 0 -> [0.6, 0.8, 0.02], layer 1 -> [0.447, 0.894]; by raw scores
    # layer 1's heads would go first.
    importance = [torch.tensor([3.0, 4.0, 0.1]), torch.tensor([0.01, 0.02])]
    assert heads_to_drop(importance, 1) == {0: [2]}
    assert heads_to_drop(importance, 2) == {0: [2], 1: [0]}
    assert heads_to_drop(importance, 3) == {0: [0, 2], 1: [0]}  # layer 1 keeps its last head
    with pytest.raises(ValueError, match="can drop 0..3 heads"):
        heads_to_drop(importance, 4)


@pytest.mark.parametrize("causal", [False, True])
def test_removed_heads_compute_what_gated_heads_compute(causal, tmp_path):
    model = _toy(causal=causal)
    drop = {0: [1, 3], 1: [0]}
    ids, lengths, _ = _batches(1)[0]
    gates = [torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 1.0, 1.0])]
    with torch.no_grad(), head_gates(model, gates):
        masked = model(ids, lengths=lengths)  # (B, T, V)
    pruned = _toy(causal=causal)
    remove_heads(pruned, drop)
    assert pruned.cfg.layer_heads == [2, 3] and [b.attn.q_proj.weight.shape for b in pruned.blocks] == [
        (16, 32), (24, 32)] and pruned.blocks[1].attn.o_proj.weight.shape == (32, 24)
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids, lengths=lengths), masked, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(ids, lengths=lengths), masked, atol=1e-3)  # the heads mattered

    vocab = CharVocab(list("abcdefghijklm"))  # 7 special ids + 13 characters = vocab_size 20
    save_checkpoint(tmp_path / "ckpt", pruned, pruned.cfg, vocab)
    assert read_meta(tmp_path / "ckpt")[0]["model"]["layer_heads"] == [2, 3]
    loaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.cfg.layer_heads == [2, 3] and loaded.num_params() == pruned.num_params() < model.num_params()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, lengths=lengths), masked, rtol=1e-5, atol=1e-5)
    if causal:  # cached decoding (the KV cache sizes each layer by its own head count) agrees as well
        cache = loaded.new_cache(1, 16)
        with torch.no_grad():
            stepwise = torch.cat([loaded(ids[:1, i : i + 1], cache=cache) for i in range(10)], dim=1)
            torch.testing.assert_close(stepwise, loaded(ids[:1]), rtol=1e-4, atol=1e-4)


def test_unpruned_configs_are_written_as_before():
    cfg = ModelConfig(vocab_size=20, n_layers=2, n_heads=4, d_model=32, layer_heads=[4, 4])
    assert cfg.layer_heads == [] and "layer_heads" not in cfg.to_dict()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="layer_heads must give each of the 2 layers 1..4 heads"):
        ModelConfig(vocab_size=20, n_layers=2, n_heads=4, d_model=32, layer_heads=[4, 0])


def test_prune_removes_heads_and_layers_from_the_command_line(two_layer_segmenter, tmp_path):
    ckpt, data = two_layer_segmenter
    out = tmp_path / "pruned"
    files = ["--train", str(data), "--dev", str(data), "--test", str(data)]
    assert prune.main(["--ckpt", str(ckpt), *files, "--out", str(out), "--drop-layers", "0", "--drop-heads", "1",
                       "--recover-steps", "0", "--repeats", "1"]) == 0
    r = json.loads((out / "results.json").read_text())
    importance = r["head_importance"]
    assert len(importance) == 2 and all(len(s) == 2 and min(s) > 0 for s in importance)
    (layer, heads), = r["dropped_heads"].items()
    assert len(heads) == 1 and r["dropped_layers"] == []
    assert r["pruned"]["layer_heads"] == [1 if i == int(layer) else 2 for i in range(2)]
    model, _, _ = load_task_checkpoint(out / "best")
    assert model.body.cfg.layer_heads == r["pruned"]["layer_heads"]
    d_model, head_dim = model.body.cfg.d_model, model.body.cfg.head_dim
    assert r["original"]["parameters"] - r["pruned"]["parameters"] == 4 * d_model * head_dim  # q, k, v, o
    assert r["pruned"]["test_f1"] == r["pruned_before_recovery"]["test_f1"]  # no recovery: the same model

    both = tmp_path / "both"
    assert prune.main(["--ckpt", str(ckpt), *files, "--out", str(both), "--drop-layers", "1", "--drop-heads", "1",
                       "--recover-steps", "2", "--repeats", "1"]) == 0
    r = json.loads((both / "results.json").read_text())
    assert r["pruned"]["n_layers"] == 1 and r["pruned"]["layer_heads"] == [1]
    with pytest.raises(CharformerError, match="--drop-heads: can drop 0..1 heads"):
        prune.main(["--ckpt", str(ckpt), *files, "--out", str(tmp_path / "x"), "--drop-layers", "1",
                    "--drop-heads", "2"])
    with pytest.raises(CharformerError, match="nothing to do"):
        prune.main(["--ckpt", str(ckpt), *files, "--out", str(tmp_path / "y"), "--drop-layers", "0",
                    "--recover-steps", "0"])
    control = tmp_path / "control"  # nothing removed, the same recovery: the original trained as long
    assert prune.main(["--ckpt", str(ckpt), *files, "--out", str(control), "--drop-layers", "0",
                       "--recover-steps", "2", "--repeats", "1"]) == 0
    r = json.loads((control / "results.json").read_text())
    assert r["pruned"]["n_layers"] == r["original"]["n_layers"] and r["pruned"]["parameters"] == r["original"]["parameters"]
