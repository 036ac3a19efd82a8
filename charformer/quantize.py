"""A model made ready for inference (`prepare_for_inference`): q/k/v fused into one layer, and for the CPU int8
weights, by dynamic quantization of the transformer's linear layers.

The idea (dynamic quantization; Jacob et al. 2018, as PyTorch implements it): each weight matrix is stored as
int8 with one fp32 scale per output row (``W ≈ scale[row] · W_int8``), computed once here; at every call the
activations are quantized on the fly to 8 bits with one scale and zero point for the whole tensor, taken from
its current min and max (hence "dynamic": nothing is calibrated in advance, so any checkpoint converts in well
under a second); the product runs in integer arithmetic with int32 accumulation (AVX-512 VNNI / AMX on recent
x86 CPUs, through fbgemm or oneDNN) and is scaled back to fp32. Everything else stays fp32: embeddings, norms,
rotary positions, attention, GELU, the task heads and the decoders.

What is quantized: the q/k/v/o projections (q/k/v as one layer once fused) and the two MLP matrices of every
block (``12·C²`` weights per layer, nearly all of the compute), and for a language model the output layer (the
tied embedding: an int8 copy is packed for the output, the fp32 table stays for the input lookup). A task head
(C x K scores for K tags or labels) stays fp32: it is a negligible share of the time, and its scores feed
Viterbi and softmax directly. Layers wrapped by a parameter-efficient method
(`charformer.peft.inject.AdaptedLinear`) are not `nn.Linear` and stay fp32.

How much it buys, and why not more: only the linear layers get faster, and a forward pass at the tools' sizes
spends a large share of its time elsewhere (attention, GELU, elementwise operations), so even infinitely fast
int8 layers would give a bounded gain (Amdahl's law). The weights are packed for oneDNN (`int8_engine`), which
uses the CPU's AMX / VNNI int8 units and beat PyTorch's default x86 engine (fbgemm) in an A/B on the segmenter.
A oneDNN call has a fixed cost (quantizing the input, dispatch) comparable to a whole d_model x d_model layer at
small batches; hence `fuse_for_inference`, which the tools apply at every precision, so that q, k and v take
one call. End to end (windows, Viterbi, words) `bench/inference.py` measures both precisions, with the q/k/v
fusion and the malloc settings of `charformer.heap`; its figures are in bench/results/inference_cpu.json and
the README. Memory: the int8 weights take a quarter of the fp32 bytes, but a process's peak is dominated by
torch itself and the fp32 activations.

Why PyTorch's implementation rather than our own: a plain int8 linear written here (per-token activation
scales, `torch._int_mm`) was slower than fp32 for the MLP shapes, because quantizing and rescaling activations in eager mode are separate passes over memory, which fbgemm and
oneDNN fuse into the GEMM. `torch.ao.quantization` is deprecated in favour of torchao (not a dependency here)
but still works in torch 2.13; its deprecation warnings are silenced for this one call (`quantize_int8`). If a
later torch removes it, `quantize_int8` says so instead of failing obscurely.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from .errors import CharformerError
from .model import CharTransformer, SelfAttention
from .device import pick_device


def int8_module_names(model: nn.Module) -> list[str]:
    """The submodules `quantize_int8` converts (all their `nn.Linear` layers): ``["blocks", "lm_head"]`` for a
    `CharTransformer`, ``["body.blocks"]`` for a task model (an encoder `body` plus a head). Raises
    CharformerError for anything else."""
    if isinstance(model, CharTransformer):
        return ["blocks", "lm_head"]
    if isinstance(getattr(model, "body", None), CharTransformer):
        return ["body.blocks"]
    raise CharformerError(f"int8 quantization takes a CharTransformer or a task model, got {type(model).__name__}")


def quantize_int8(model: nn.Module) -> nn.Module:
    """Give `model`'s transformer linear layers int8 weights (see the module docstring), in place; returns it.

    The model must be on the CPU (the quantized kernels are CPU kernels) and is used for inference only (it
    has no gradients). Raises CharformerError for a model elsewhere, or a torch without dynamic quantization.
    """
    names = int8_module_names(model)
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise CharformerError(f"int8 inference runs on the CPU, but the model is on {device}")
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as e:
        raise CharformerError(f"this torch ({torch.__version__}) has no dynamic quantization ({e}); run without "
                              "--int8") from None
    engines = torch.backends.quantized
    previous = engines.engine
    with warnings.catch_warnings():
        # torch.ao.quantization and quantized tensors announce their deprecation on every use; see above.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\.")
        warnings.filterwarnings("ignore", message=r"(?s).*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"(?s).*quantized tensor creation functions .* are deprecated")
        try:
            # The weights are packed for the engine current now and keep it, whatever the global setting later.
            engines.engine = int8_engine()
            quantize_dynamic(model.eval(), {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8,
                             inplace=True)
        finally:
            engines.engine = previous
    return model


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Stack the q/k/v projections of every attention layer of `model` into one (`SelfAttention.fuse_qkv`), in
    place; returns it. The same products, one matmul instead of three: the prediction tools do it for every
    precision, before `quantize_int8` for int8, where it matters most (at small batches an int8 layer costs about
    the same for 3C outputs as for C: its time is the fixed cost of quantizing the input and calling oneDNN). A model fused this way is for inference: it no longer has q/k/v_proj to adapt or train."""
    for module in model.modules():
        if isinstance(module, SelfAttention):
            module.fuse_qkv()
    return model


def prepare_for_inference(model: nn.Module, *, int8: bool) -> nn.Module:
    """What every prediction tool does to a loaded model (a `CharTransformer` or a task model) before use, in
    place: eval mode, `fuse_for_inference`, and with `int8` `quantize_int8`. Returns the model. Raises
    CharformerError as `quantize_int8` does (int8 for a model not on the CPU)."""
    fuse_for_inference(model.eval())
    return quantize_int8(model) if int8 else model


def int8_engine() -> str:
    """The quantized engine `quantize_int8` packs weights for: oneDNN where this torch has it, else the default."""
    return "onednn" if "onednn" in torch.backends.quantized.supported_engines else torch.backends.quantized.engine


def inference_device(name: str, int8: bool) -> torch.device:
    """The device a prediction tool runs on: `charformer.device.pick_device` of `name`, except that int8 means
    the CPU (``auto`` picks it). Raises CharformerError for int8 with ``cuda``."""
    if int8 and name == "auto":
        return torch.device("cpu")
    device = pick_device(name)
    if int8 and device.type != "cpu":
        raise CharformerError("--int8 is for CPU inference: use --device cpu (or auto)")
    return device
