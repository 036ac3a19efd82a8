"""Classify texts with a fine-tuned classification checkpoint (finetune.py --task classify).

    python -m charformer.classify --ckpt out/chnsenticorp reviews.txt
    echo 房间很干净，服务也好 | python -m charformer.classify --ckpt out/chnsenticorp --probs

One text per line in; each line out as ``LABEL<TAB>TEXT`` (with ``--probs``: ``LABEL<TAB>PROBABILITY<TAB>TEXT``),
the text and its line ending (LF, CRLF or CR) unchanged, so the output is the TSV format the classifier trains
on. A TAB inside a text is kept too, so split a row at its first one (two with ``--probs``) only. Empty lines
pass through empty; a leading byte-order mark is dropped (`charformer.data`). Texts longer than the model's
block are read whole, in chunks. The input is streamed (`charformer.tasks.streaming`): output is written a
window of lines at a time, in input order. ``--ckpt`` given more than once: an ensemble, the mean of the
checkpoints' label probabilities (`charformer.finetuning.ensemble`).
"""

from __future__ import annotations

import torch

from .errors import run_cli
from .finetuning.ensemble import ensemble_label_probs
from .tasks.streaming import read_windows
from .tasks.tool import base_parser, load_for, parse_tool_args, show_progress, write


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--probs", action="store_true", help="add the probability of the predicted label")
    args, own = parse_tool_args(p, argv)
    members = load_for(args, "classify")
    labels = members[0][2]["labels"]
    for lines in read_windows(args.file, args.window_chars):
        filled = [i for i, (text, _) in enumerate(lines) if text]
        with torch.inference_mode():
            probs = ensemble_label_probs(members, [lines[i][0] for i in filled], batch_size=args.batch_size,
                                         progress=show_progress(lines))
        out = [ending for _, ending in lines]  # empty lines stay empty
        for i, row in zip(filled, probs):
            text, ending = lines[i]
            label = labels[int(row.argmax())]
            out[i] = f"{label}\t{float(row.max()):.4f}\t{text}{ending}" if own["probs"] else f"{label}\t{text}{ending}"
        write("".join(out))
    return 0


if __name__ == "__main__":
    run_cli(main)
