"""charformer: a character-level transformer written from scratch.

Modules, in reading order: `vocab` (characters <-> ids), `model` (the transformer), `attention` (one entry point
for every attention implementation), `generate` (sampling with a KV cache), `data` (corpora and batches),
`objectives` (what a model is trained to predict), `train` (the one training loop), `run` (a training run's
set-up, shared by pretrain.py and finetune.py), `checkpoint` (safetensors + JSON), `device`, `cli` and `runlog`
(plumbing), `sample` (command-line sampling). Fine-tuning: `tasks` (readers, tagging schemes, metrics, heads,
prediction, objectives for segmentation, NER and classification) and its command-line tools `segment`, `tag`
and `classify`. `command`: the ``charformer`` command, whose subcommands are all of these scripts and tools.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import CharformerError
from .model import CharTransformer, ModelConfig
from .vocab import CharVocab

__all__ = ["CharTransformer", "ModelConfig", "CharVocab", "CharformerError", "load_checkpoint", "save_checkpoint"]
