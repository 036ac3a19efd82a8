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

Both keep every character as it was; line endings (LF, CRLF, CR) and a leading byte-order mark are not part of
the text (`charformer.data`). The input is streamed (`charformer.tasks.streaming`): output is written a window
of lines at a time, in input order. ``--ckpt`` given more than once: an ensemble, decoding the mean of the
checkpoints' per-character tag probabilities (`charformer.finetuning.ensemble`).
"""

from __future__ import annotations

import json

import torch

from .errors import CharformerError, run_cli
from .finetuning.ensemble import ensemble_tag_paths
from .tasks.schemes import tags_to_spans
from .tasks.streaming import read_windows
from .tasks.tool import base_parser, load_for, parse_tool_args, show_progress, write


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--format", choices=("conll", "jsonl"), default="conll", help="output format (default conll)")
    args, own = parse_tool_args(p, argv)
    members = load_for(args, "ner")
    task = members[0][2]
    n_read = 0
    for lines in read_windows(args.file, args.window_chars):
        texts = [text for text, _ in lines]
        if own["format"] == "conll":
            tabbed = next((n for n, text in enumerate(texts, n_read + 1) if "\t" in text), None)
            if tabbed is not None:
                raise CharformerError(f"{args.file or '<stdin>'}:{tabbed}: a TAB cannot be written as a CoNLL "
                                      "token (it separates the columns): use --format jsonl")
        n_read += len(texts)
        with torch.inference_mode():
            paths = ensemble_tag_paths(members, texts, batch_size=args.batch_size, overlap=task["overlap"],
                                       progress=show_progress(texts))
        write(format_window(texts, [[task["tags"][i] for i in path] for path in paths], own["format"]))
    return 0


def format_window(texts: list[str], tags: list[list[str]], output_format: str) -> str:
    """The output of a window of texts with their predicted tags, in ``conll`` or ``jsonl``."""
    out = []
    for text, text_tags in zip(texts, tags):
        if output_format == "conll":
            if text:
                out.append("".join(f"{char}\t{tag}\n" for char, tag in zip(text, text_tags)) + "\n")
        else:
            entities = [{"start": s, "end": e, "type": t, "text": text[s:e]} for s, e, t in tags_to_spans(text_tags)]
            out.append(json.dumps({"text": text, "entities": entities}, ensure_ascii=False) + "\n")
    return "".join(out)


if __name__ == "__main__":
    run_cli(main)
