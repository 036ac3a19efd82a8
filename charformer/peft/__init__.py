"""Parameter-efficient fine-tuning of a `CharTransformer`, one method per file.

* `lora`: low-rank updates ``W + (alpha/r) B A`` of chosen linear layers (Hu et al. 2021), mergeable.
* `adapter`: bottleneck MLPs after the attention and the MLP of every block (Houlsby et al. 2019).
* `prefix`: learned key/value positions in front of every attention layer (Li & Liang 2021).
* `adalora`: LoRA in SVD form with the rank budget moved to where it matters (Zhang et al. 2023).
* `inject`: how these attach to the model without renaming its weights.
* `common`: `apply_method` (also "full" and "freeze"), parameter counts, and adapter files tied to the
  fingerprint of their base, so one base model can serve many adapters; finding an adapter's base.
* `training`: a method inside the shared training loop (command-line options, AdaLoRA's controller, what a
  fine-tuning run saves).
"""

from .adalora import AdaLoRAController
from .common import (
    METHODS,
    apply_method,
    base_fingerprint,
    describe_trainable,
    find_adapter,
    load_adapted_checkpoint,
    load_adapter,
    open_adapter,
    read_adapter_meta,
    remove_method,
    save_adapter,
    trainable_parameters,
)
from .lora import merge, unmerge
from .prefix import fold_prefix

__all__ = [
    "METHODS",
    "AdaLoRAController",
    "apply_method",
    "base_fingerprint",
    "describe_trainable",
    "find_adapter",
    "fold_prefix",
    "load_adapted_checkpoint",
    "load_adapter",
    "merge",
    "open_adapter",
    "read_adapter_meta",
    "remove_method",
    "save_adapter",
    "trainable_parameters",
    "unmerge",
]
