"""How close each kernel must be to its fp32 reference, per input dtype: the one table tests and checks use.

Outputs, lse and gradients are compared with ``torch.testing.assert_close(actual.float(), expected, **TOLERANCES
[dtype])``, where ``expected`` is the reference evaluated on fp32 copies of the inputs.

* fp32 is exact up to summation order (the GPU kernels use IEEE fp32 dots, not TF32).
* fp16 and bf16 kernels round P and dS to the input dtype before their matmuls, as every FlashAttention does.
  Worst errors measured on the CPU test suite, as a fraction of the bound (|err| / (atol + rtol·|expected|)):
  attention 0.04 in fp32 and 0.22 in fp16, softmax 0.002 and 0.03. At T = 1000 with a 300-key window the fp16
  attention errors stayed below 1.4e-3.
* bf16 (8 mantissa bits against fp16's 11) gets 8x the fp16 bound. It is only tested on a GPU: the interpreter
  computes bf16 wrongly.
"""

import torch

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.float16: dict(atol=5e-3, rtol=5e-3),
    torch.bfloat16: dict(atol=4e-2, rtol=4e-2),
}
