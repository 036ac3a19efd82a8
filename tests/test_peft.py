"""Fine-tuning methods (charformer.peft): identity at step 0, what trains, adapter files, merging, AdaLoRA's
budget, prefix tuning across attention implementations, padding and cached generation."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from charformer.errors import CharformerError
from charformer.generate import generate
from charformer.peft import (
    AdaLoRAController,
    apply_method,
    base_fingerprint,
    fold_prefix,
    load_adapter,
    merge,
    remove_method,
    save_adapter,
    trainable_parameters,
    unmerge,
)
from charformer.peft.inject import peft_prefixes
from tests.helpers import tiny_model, train_next_char

OPTIONS = {
    "full": ("full", {}),
    "freeze": ("freeze", {}),
    "lora": ("lora", {"r": 4, "targets": ["query", "key", "value", "output", "mlp"]}),
    "adapter": ("adapter", {"bottleneck": 8}),
    "prefix": ("prefix", {"n_prefix": 4}),
    "prefix_reparam": ("prefix", {"n_prefix": 4, "reparam_hidden": 16}),
    "adalora": ("adalora", {"r": 6}),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def ids(batch=2, length=16, seed=0):
    return torch.randint(7, 50, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def perturb(*modules, seed=1):
    """Move every trainable tensor away from its initial value, as training would (B = 0 would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    for m in modules:
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("case", ["full", "freeze", "lora", "adapter", "adalora"])
def test_zero_initialised_update_leaves_the_base_output_unchanged(case):
    method, options = OPTIONS[case]
    model = tiny_model()
    x = ids()
    with torch.no_grad():
        before = model(x)
        apply_method(model, method, **options)
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)


def test_prefix_joins_attention_and_removing_it_restores_the_base():
    # A prefix cannot be the identity at step 0 (P more keys share every softmax); see charformer/peft/prefix.py.
    model = tiny_model()
    x = ids()
    with torch.no_grad():
        before = model(x)
        apply_method(model, "prefix", n_prefix=4)
        assert (model(x) - before).abs().max() > 1e-3
        remove_method(model)
        assert torch.equal(model(x), before)


@pytest.mark.parametrize("case", list(OPTIONS))
def test_only_the_intended_parameters_get_gradients(case):
    method, options = OPTIONS[case]
    model, head = tiny_model().train(), nn.Linear(32, 3)
    apply_method(model, method, **options)
    peft = peft_prefixes(model)
    F.cross_entropy(head(model.hidden_states(ids())).flatten(0, 1), torch.zeros(32, dtype=torch.long)).backward()
    for name, p in model.named_parameters():
        intended = method == "full" or name.startswith(peft)
        assert p.requires_grad == intended, name
        assert (p.grad is not None) == intended, name
    assert all(p.grad is not None for p in head.parameters())
    assert method in ("full", "freeze") or peft


@pytest.mark.parametrize("case", list(OPTIONS))
def test_adapter_round_trip_reproduces_logits(case, tmp_path):
    method, options = OPTIONS[case]
    model, head = tiny_model(), nn.Linear(32, 5)
    fingerprint = base_fingerprint(model.cfg, model)  # before training: "full" changes the body
    saved_options = apply_method(model, method, **options)
    perturb(model, head)
    x = ids()
    with torch.no_grad():
        hidden = model.hidden_states(x)
        logits, head_out = model.lm_head(hidden), head(hidden)
    path = save_adapter(tmp_path / "ad", model, model.cfg, fingerprint, method, saved_options, modules={"head": head},
                        extra={"task": "test"})

    fresh, fresh_head = tiny_model(), nn.Linear(32, 5)
    meta = load_adapter(path, fresh, modules={"head": fresh_head})
    with torch.no_grad():
        hidden = fresh.hidden_states(x)
        assert torch.equal(fresh.lm_head(hidden), logits)
        assert torch.equal(fresh_head(hidden), head_out)
    assert meta["method"] == method and meta["task"] == "test"
    if method != "full":  # an adapter, not a copy of the model
        base_bytes = 4 * sum(p.numel() for p in tiny_model().parameters())
        assert (path / "adapter.safetensors").stat().st_size < 0.4 * base_bytes


@pytest.mark.parametrize("differs", ["one weight", "shape"])
def test_loading_onto_another_base_is_refused(differs, tmp_path):
    model = tiny_model()
    options = apply_method(model, "lora", r=2)
    path = save_adapter(tmp_path / "ad", model, model.cfg, model, "lora", options)
    base = tiny_model(d_model=48) if differs == "shape" else tiny_model()
    if differs == "one weight":
        with torch.no_grad():
            base.blocks[0].mlp.fc_in.weight[0, 0] += 1e-3
    before = base(ids()).detach()
    with pytest.raises(CharformerError, match="adapter was made for another base"):
        load_adapter(path, base)
    assert torch.equal(base(ids()), before)  # left untouched
    with pytest.raises(CharformerError, match="no adapter here"):
        load_adapter(tmp_path / "nothing", base)


def test_one_base_serves_many_adapters_in_turn(tmp_path):
    x = ids()
    adapters, expected = {}, {}
    for case in ("lora", "adapter", "prefix", "adalora"):
        method, options = OPTIONS[case]
        trained = tiny_model()
        options = apply_method(trained, method, **options)
        perturb(trained, seed=len(adapters) + 1)
        adapters[case] = save_adapter(tmp_path / case, trained, trained.cfg, trained, method, options)
        expected[case] = trained(x).detach()

    server = tiny_model(attn_impl="naive", dropout=0.1).eval()  # run-time settings are not part of the base
    base_weights = {k: v.clone() for k, v in server.state_dict().items()}
    base_logits = server(x).detach()
    with torch.no_grad():
        for case in ("lora", "adapter", "lora", "prefix", "adalora", "lora"):
            load_adapter(adapters[case], server)
            torch.testing.assert_close(server(x), expected[case], rtol=0, atol=1e-5)
            if case in ("lora", "adalora"):
                merge(server)  # merged weights must not leak into the next adapter
                torch.testing.assert_close(server(x), expected[case], rtol=0, atol=1e-5)
        remove_method(server)
        assert torch.equal(server(x), base_logits)
    assert all(torch.equal(v, base_weights[k]) for k, v in server.state_dict().items())


def test_lora_merge_gives_the_same_logits_and_unmerge_restores_the_weights():
    model = tiny_model()
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    apply_method(model, "lora", **OPTIONS["lora"][1])
    perturb(model)
    x = ids()
    with torch.no_grad():
        unmerged = model(x)
        merge(model)
        assert (model(x) - unmerged).abs().max() < 1e-5
        assert not torch.equal(model.blocks[0].attn.q_proj.weight, base_weights["blocks.0.attn.q_proj.weight"])
        unmerge(model)
        assert torch.equal(model(x), unmerged)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base_weights.items())


def test_lora_parameter_count():
    model = tiny_model()
    _, total = trainable_parameters(model)
    apply_method(model, "lora", r=4, targets="query,mlp")
    c = model.cfg
    per_layer = 4 * (c.d_model + c.d_model) + 4 * (c.d_model + c.d_ff) + 4 * (c.d_ff + c.d_model)
    assert trainable_parameters(model) == (c.n_layers * per_layer, total + c.n_layers * per_layer)


def test_lora_training_reduces_the_loss():
    model = tiny_model().train()
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    apply_method(model, "lora", r=4, targets="all")
    x = (torch.arange(33)[None] * 5 + torch.arange(4)[:, None] * 7) % 43 + 7  # each character fixes the next
    losses = train_next_char(model, x, steps=20, lr=1e-2)
    # The frozen tied embeddings (std 0.02) cap how confident the logits can get; 0.25 nats is a clear drop.
    assert losses[-1] < losses[0] - 0.25
    remove_method(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base_weights.items())


def test_adalora_budget_reaches_the_target_rank_and_regulariser_starts_at_zero():
    model = tiny_model().train()
    apply_method(model, "adalora", r=6)  # 2 blocks x 6 layers x rank 6 = 72 triplets
    ctl = AdaLoRAController(model, target_rank=2, total_steps=30, init_warmup=5, final_warmup=5)
    assert ctl.initial_budget == 72 and ctl.target_budget == 24
    assert ctl.regularizer().item() < 1e-10  # P, Q start orthonormal
    assert [ctl.budget(s) for s in (0, 4, 5, 25, 29)] == [72, 72, 72, 24, 24]
    assert 24 < ctl.budget(15) < 72
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    kept = []
    for step in range(30):
        x = ids(2, 16, seed=step)
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()) + ctl.regularizer()
        loss.backward()
        opt.step()
        kept.append(ctl.update_and_mask(step))
        opt.zero_grad()
    assert kept[:5] == [72] * 5 and kept[5:25] == [ctl.budget(s) for s in range(5, 25)] and kept[25:] == [24] * 5
    assert ctl.regularizer().item() > 0  # training moved P and Q
    for m in ctl.layers.values():
        assert torch.all(m.E[~m.rank_mask] == 0)

    resumed = AdaLoRAController(model, target_rank=2, total_steps=30, init_warmup=5, final_warmup=5)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.mask_frozen and all(torch.equal(resumed._scores(n), ctl._scores(n)) for n in ctl.layers)


def _padded_batch(lengths, seed=0):
    seqs = [ids(1, n, seed=seed + i)[0] for i, n in enumerate(lengths)]
    batch = torch.zeros(len(seqs), max(lengths), dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = s
    return seqs, batch


def _prefixed(impl, causal=True, reparam=None):
    model = tiny_model(attn_impl=impl, causal=causal)
    torch.manual_seed(1)
    apply_method(model, "prefix", n_prefix=4, reparam_hidden=reparam)
    return model


@pytest.mark.parametrize("impl,causal", [("sdpa", True), ("sdpa", False), ("fused_softmax", True),
                                         ("triton", True), ("triton", False)])
def test_prefix_gives_the_same_outputs_and_gradients_with_every_attention_implementation(impl, causal):
    if impl == "triton":
        pytest.importorskip("kernels.flash_attention")
    _, batch = _padded_batch([16, 9, 1])
    lengths = torch.tensor([16, 9, 1])
    results = []
    for name in ("naive", impl):
        model = _prefixed(name, causal).train()
        out = model(batch, lengths=lengths)
        out[0].sum().backward()
        results.append((out.detach(), model.blocks[0].attn.kv_prefix.key.grad))
    (ref, ref_grad), (out, grad) = results
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_prefix_padded_batch_matches_each_sequence_alone(causal):
    model = _prefixed("sdpa", causal)
    lengths = [16, 9, 1]
    seqs, batch = _padded_batch(lengths)
    with torch.no_grad():
        padded = model(batch, lengths=torch.tensor(lengths))
        for i, s in enumerate(seqs):
            torch.testing.assert_close(padded[i, : len(s)], model(s[None])[0], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(padded).all()


def test_prefix_works_with_cached_generation_and_folds_without_change():
    model = tiny_model(block_size=16)
    torch.manual_seed(1)
    apply_method(model, "prefix", n_prefix=4, reparam_hidden=16)
    perturb(model)
    prompt = ids(2, 5)
    # 30 new characters with block 16: crosses the point where the cache must be refilled.
    ids_c, logits_c = generate(model, prompt, 30, temperature=0, use_cache=True, return_logits=True)
    ids_u, logits_u = generate(model, prompt, 30, temperature=0, use_cache=False, return_logits=True)
    assert torch.equal(ids_c, ids_u)
    for a, b in zip(logits_c, logits_u):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    x = ids()
    with torch.no_grad():
        before = model(x)
        fold_prefix(model)
        assert torch.equal(model(x), before)
    assert {n.rsplit(".", 1)[-1] for n, _ in model.named_parameters() if n.startswith(peft_prefixes(model))} == {
        "key", "value"}


def test_bad_method_options_and_double_application_are_refused():
    model = tiny_model()
    with pytest.raises(CharformerError, match="unknown fine-tuning method"):
        apply_method(model, "qlora")
    with pytest.raises(CharformerError, match="rank"):
        apply_method(model, "lora", rank=4)
    with pytest.raises(CharformerError, match="unknown target"):
        apply_method(model, "lora", targets=["gate"])
    with pytest.raises(CharformerError, match="no options"):
        apply_method(model, "freeze", r=4)
    apply_method(model, "adapter")
    with pytest.raises(CharformerError, match="remove_method"):
        apply_method(model, "lora")
    with pytest.raises(CharformerError, match="sliding-window"):
        apply_method(tiny_model(window=8), "prefix")
    with pytest.raises(ValueError, match="no AdaLoRA layers"):
        AdaLoRAController(model, target_rank=1, total_steps=10, init_warmup=1, final_warmup=1)
    adalora = tiny_model()
    apply_method(adalora, "adalora")
    with pytest.raises(ValueError, match="init_warmup"):
        AdaLoRAController(adalora, target_rank=1, total_steps=10, init_warmup=5, final_warmup=5)
