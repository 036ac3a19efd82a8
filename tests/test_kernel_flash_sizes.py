"""FlashAttention at the sizes and configs the benchmark uses, against the fp32 reference: the first step of
``bench/gpu_check.sh`` (run there with ``pytest -n`` so that the workers' compilations overlap).

On a GPU: T in {1000, 4133} and Tq = 1000 / Tk = 1200, D in {64, 128}, causal or not, bf16 and fp16, plain and
with key lengths + a window; the autotuner picks among the same default configs as in the benchmark
(KERNELS_AUTOTUNE=1), so the configs it chooses are the ones tested. On the CPU the interpreter runs the same cases
at short lengths (still crossing tile boundaries) and in fp16 only: bf16 the interpreter computes wrongly, and fp32
is covered by ``test_kernel_flash.py``.
"""

import pytest
import torch

from tests.test_kernel_flash import check_against_reference

GPU = torch.cuda.is_available()
LENGTHS = [(1000, 1000), (4133, 4133), (1000, 1200)] if GPU else [(40, 40), (67, 67), (40, 60)]
DTYPES = [torch.bfloat16, torch.float16] if GPU else [torch.float16]


@pytest.mark.parametrize("masks", ["plain", "lengths+window"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("tq, tk", LENGTHS)
def test_benchmark_sizes_match_reference(tq, tk, d, causal, dtype, masks, device):
    kw = {}
    if masks == "lengths+window":  # one full sequence, one cut at 3/5 of the keys; a window of a quarter of Tk
        kw = dict(key_lengths=torch.tensor([tk, tk * 3 // 5], device=device), window=tk // 4)
    check_against_reference(2, 2 if GPU else 1, tq, tk, d, dtype, device, causal=causal, **kw)
