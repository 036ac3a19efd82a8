"""Inference preparation (charformer.quantize): q/k/v fusion computes what the separate projections do; int8:
which layers are converted, how close the outputs stay to fp32, and the --int8 option of the prediction tools
(segmentation still round-trips)."""

import contextlib
import io
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from charformer import sample, segment
from charformer.checkpoint import save_checkpoint
from charformer.errors import CharformerError
from charformer.generate import generate
from charformer.peft.lora import add_lora
from charformer.quantize import (fuse_for_inference, inference_device, int8_module_names, prepare_for_inference,
                                 quantize_int8)
from charformer.tasks.checkpoint import load_task_checkpoint
from charformer.vocab import CharVocab
from tests.helpers import tiny_model
from tests.nasty.make_nasty import SEGMENTED

NASTY = Path(__file__).parent / "nasty"
# Tag log-probabilities of int8 and fp32 models differ by at most this much (nats). Weights are rounded to 1/254 of
# each row's largest magnitude and activations to 1/255 of their range per tensor; over the tiny models here the
# largest difference measured is about 0.01.
LOGPROB_TOLERANCE = 0.05


def _is_int8(module: nn.Module) -> bool:
    return isinstance(module, torch.ao.nn.quantized.dynamic.Linear)


def test_fused_qkv_gives_the_same_encoder_outputs(tiny_segmenter):
    separate = load_task_checkpoint(tiny_segmenter)[0]
    fused = fuse_for_inference(load_task_checkpoint(tiny_segmenter)[0])
    attn = fused.body.blocks[0].attn
    assert attn.qkv_proj.weight.shape == (96, 32) and not hasattr(attn, "q_proj")
    assert not attn.fuse_qkv()  # a second call changes nothing
    torch.manual_seed(0)
    ids = torch.randint(separate.body.cfg.vocab_size, (4, 16))
    lengths = torch.tensor([16, 9, 1, 0])
    with torch.inference_mode():
        torch.testing.assert_close(fused(ids, lengths), separate(ids, lengths), rtol=1e-5, atol=1e-5)


def test_fused_qkv_generates_the_same_text_with_the_kv_cache():
    separate, fused = tiny_model(), fuse_for_inference(tiny_model())
    prompt = torch.randint(50, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(fused(prompt), separate(prompt), rtol=1e-5, atol=1e-5)
        assert torch.equal(generate(fused, prompt, 20, temperature=0), generate(separate, prompt, 20, temperature=0))


def test_adapted_projections_are_not_fused():
    model = tiny_model()
    add_lora(model, r=2, targets="query")  # q_proj wrapped, k/v plain: fusing would drop the update
    fuse_for_inference(model)
    assert all(block.attn.qkv_proj is None and hasattr(block.attn, "k_proj") for block in model.blocks)


def test_prepare_for_inference_int8_quantizes_the_fused_layer(tiny_segmenter):
    fp32 = prepare_for_inference(load_task_checkpoint(tiny_segmenter)[0], int8=False)
    int8 = prepare_for_inference(load_task_checkpoint(tiny_segmenter)[0], int8=True)
    assert type(fp32.body.blocks[0].attn.qkv_proj) is nn.Linear and _is_int8(int8.body.blocks[0].attn.qkv_proj)
    ids, lengths = torch.randint(fp32.body.cfg.vocab_size, (3, 16)), torch.tensor([16, 7, 2])
    with torch.inference_mode():
        a, b = fp32(ids, lengths).log_softmax(-1), int8(ids, lengths).log_softmax(-1)
    real = torch.arange(16)[None, :] < lengths[:, None]
    assert (a - b)[real].abs().max() <= LOGPROB_TOLERANCE


def test_block_linears_become_int8_and_heads_stay_fp32(tiny_segmenter):
    model, _, _ = load_task_checkpoint(tiny_segmenter)
    assert int8_module_names(model) == ["body.blocks"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecation warnings of torch.ao are silenced inside
        quantize_int8(model)
    block = model.body.blocks[0]
    for layer in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj, block.attn.o_proj, block.mlp.fc_in,
                  block.mlp.fc_out):
        assert _is_int8(layer)
    assert type(model.head.proj) is nn.Linear and type(model.body.lm_head) is nn.Linear  # lm_head unused by a tagger

    engine = torch.backends.quantized.engine
    lm = quantize_int8(tiny_model())
    assert torch.backends.quantized.engine == engine  # packing for oneDNN does not change the process's setting
    assert _is_int8(lm.lm_head) and type(lm.tok_emb) is nn.Embedding  # the tied table stays fp32 for the input
    with pytest.raises(CharformerError, match="takes a CharTransformer or a task model"):
        quantize_int8(nn.Linear(4, 4))


def test_int8_tag_scores_stay_close_to_fp32(tiny_segmenter):
    fp32, vocab, _ = load_task_checkpoint(tiny_segmenter)
    int8 = quantize_int8(load_task_checkpoint(tiny_segmenter)[0])
    torch.manual_seed(0)
    ids = torch.randint(len(vocab), (6, 16))
    lengths = torch.tensor([16, 16, 9, 3, 1, 12])
    with torch.inference_mode():
        a, b = fp32(ids, lengths).log_softmax(-1), int8(ids, lengths).log_softmax(-1)
    real = torch.arange(16)[None, :] < lengths[:, None]
    assert (a - b)[real].abs().max() <= LOGPROB_TOLERANCE


def test_int8_language_model_logits_stay_close():
    fp32 = tiny_model(vocab_size=300)
    int8 = quantize_int8(tiny_model(vocab_size=300))
    x = torch.randint(300, (3, 32))
    with torch.inference_mode():
        a, b = fp32(x).log_softmax(-1), int8(x).log_softmax(-1)
    assert (a - b).abs().max() <= LOGPROB_TOLERANCE


@pytest.mark.parametrize("name", ["bom_crlf.txt", "astral.txt", "control.txt", "mixed_endings.txt"])
def test_int8_segmentation_still_round_trips(tiny_segmenter, tmp_path, capsysbinary, name):
    path = NASTY / name
    assert segment.main(["--ckpt", str(tiny_segmenter), str(path), "--int8"]) == 0
    (tmp_path / "seg.txt").write_bytes(capsysbinary.readouterr().out)
    assert segment.main(["--ckpt", str(tiny_segmenter), "--join", str(tmp_path / "seg.txt")]) == 0
    assert capsysbinary.readouterr().out.decode() == path.read_bytes().decode().removeprefix("\ufeff")


def test_sample_int8(tmp_path):
    chars = sorted(set("".join(SEGMENTED.values())) - {"\ufeff"})
    vocab = CharVocab(chars[:43])  # 7 special tokens + 43 characters = the 50 ids of tiny_model
    model = tiny_model()
    save_checkpoint(tmp_path / "lm", model, model.cfg, vocab)
    out = io.BytesIO()
    with contextlib.redirect_stdout(io.TextIOWrapper(out, encoding="utf-8")):
        assert sample.main(["--ckpt", str(tmp_path / "lm"), "--prompt", chars[10], "--max-new-chars", "40", "--seed",
                            "0", "--int8"]) == 0
        printed = out.getvalue().decode()
    assert printed.startswith(chars[10]) and printed.endswith("\n")


def test_int8_means_cpu():
    assert inference_device("auto", True) == torch.device("cpu")
    with pytest.raises(CharformerError, match="(?i)cuda"):
        inference_device("cuda", True)
