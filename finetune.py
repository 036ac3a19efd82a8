"""Fine-tune a pretrained character model on a task (word segmentation, NER, classification).

Not implemented yet: this script arrives with the fine-tuning work (masked-LM pretraining, task heads,
readers for the CWS / NER / classification formats). Until then it refuses to run rather than pretend.
"""

import sys

if __name__ == "__main__":
    print("finetune.py: not yet implemented (see the README's roadmap); pretrain.py works today.", file=sys.stderr)
    sys.exit(2)
