"""Tag named entities with a fine-tuned NER checkpoint (finetune.py --task ner).

    python -m charformer.tag --ckpt out/resume_ner input.txt                  # CoNLL columns
    python -m charformer.tag --ckpt out/resume_ner --format jsonl input.txt   # one JSON object per line

One sentence per line in. Output formats:

* ``conll`` (default): the training format, one ``CHAR<TAB>TAG`` line per character of each sentence (tags in
  the model's scheme: BIO, BIOES or BMES), a blank line after each sentence. Empty input lines give nothing,
  so use jsonl when the output must line up with the input. A TAB in the text cannot be a CHAR (it separates
  the columns): such input is an error naming the line.
* ``jsonl``: for each input line (empty ones too) ``{"text": ..., "entities": [{"start", "end", "type",
  "text"}]}``, offsets in characters (code points) with ``end`` exclusive, ``text == line[start:end]``.

``--ckpt`` given more than once: an ensemble, decoding the mean of the checkpoints' per-character tag
probabilities (`charformer.finetuning.ensemble`). Both formats keep every character as it was; line endings
(LF, CRLF, CR) and a leading byte-order mark are not part of the text (`charformer.data`).
"""

from __future__ import annotations

import json

import torch

from .errors import CharformerError, run_cli
from .finetuning.ensemble import ensemble_tag_paths
from .tasks.inference import base_parser, load_for, read_lines, show_progress, write
from .tasks.schemes import tags_to_spans


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--format", choices=("conll", "jsonl"), default="conll", help="output format (default conll)")
    args = p.parse_args(argv)
    members = load_for(args, "ner")
    task = members[0][2]
    texts = [text for text, _ in read_lines(args.file)]
    if args.format == "conll":
        tabbed = next((n for n, text in enumerate(texts, 1) if "\t" in text), None)
        if tabbed is not None:
            raise CharformerError(f"{args.file or '<stdin>'}:{tabbed}: a TAB cannot be written as a CoNLL token "
                                  "(it separates the columns): use --format jsonl")
    with torch.inference_mode():
        paths = ensemble_tag_paths(members, texts, batch_size=args.batch_size, overlap=task["overlap"],
                                   progress=show_progress(texts))
    out = []
    for text, path in zip(texts, paths):
        tags = [task["tags"][i] for i in path]
        if args.format == "conll":
            if text:
                out.append("".join(f"{char}\t{tag}\n" for char, tag in zip(text, tags)) + "\n")
        else:
            entities = [{"start": s, "end": e, "type": t, "text": text[s:e]} for s, e, t in tags_to_spans(tags)]
            out.append(json.dumps({"text": text, "entities": entities}, ensure_ascii=False) + "\n")
    write("".join(out))
    return 0


if __name__ == "__main__":
    run_cli(main)
