"""Segment text into words with a fine-tuned word-segmentation checkpoint (finetune.py --task cws).

    python -m charformer.segment --ckpt out/ctb6_cws input.txt > segmented.txt
    echo 中国人民站起来了 | python -m charformer.segment --ckpt out/ctb6_cws        # 中国 人民 站 起来 了
    python -m charformer.segment --ckpt out/mc_cws --standard udc input.txt   # a multi-criteria model

One sentence per line in; the same line out with its words separated by single ASCII spaces. Empty lines and
each line's ending (LF, CRLF or a lone CR) pass through, and no character is dropped or changed: full-width
forms, Latin, digits, punctuation, U+3000 and other spaces, characters outside the BMP, combining marks and
control characters come out as they went in. A byte-order mark at the start of the input is not text and is
not written back (`charformer.data`). Lines longer than the model's block are read in overlapping windows.
A multi-criteria checkpoint (finetune.py --train NAME=PATH ..., `charformer.tasks.criteria`) segments by the
standard chosen with ``--standard NAME``; without it, the error lists the standards it knows. ``--ckpt`` given
more than once: an ensemble, decoding the mean of the checkpoints' per-character tag
probabilities (`charformer.finetuning.ensemble`) under the same constraints as one model.

An ASCII space inside an input line cannot be told from a separator, so it is written as a word of its own:
"a b" (a, space, b) comes out as "a", " ", "b" joined by separators, i.e. "a   b". The output is therefore
always exactly invertible: `join_words` (``--join``) reads it back, each literal space being the one that sits
between two separators, and ``"".join(line.split(" ")) == input`` holds for every input line without ASCII
spaces. So ``segment | segment --join`` gives back the input byte for byte, less a leading BOM.

Decoding is constrained (`charformer.tasks.constraints`): runs of digits and Latin letters ("3.14", "１９９８",
"COVID-19", "GitHub"), URLs and e-mail addresses are never cut inside (``--no-protect`` turns this off), and
with ``--user-dict FILE`` every dictionary word found in a line (leftmost-longest, without overlap) comes out
as one word with no word crossing its edges (``--dict-mode force``), or gets a score bonus that the model may
overrule (``prefer``); a dictionary word holding an ASCII space stays one word in Python, but is written by
the rule above, its spaces as words of their own. In Python: `charformer.tasks.segmenter.Segmenter`. The input
is streamed (`charformer.tasks.streaming`): output is written a window of lines at a time, in input order.
"""

from __future__ import annotations

import re

from .errors import CharformerError, excerpt, run_cli
from .tasks.constraints import DEFAULT_BONUS, MODES
from .tasks.segmenter import Segmenter
from .tasks.streaming import read_windows
from .tasks.tool import base_parser, load_for, parse_tool_args, read_lines, show_progress, write


def format_words(words: list[str]) -> str:
    """Words joined by single spaces, each ASCII space inside a word first split off as a word of its own."""
    pieces = [piece for word in words for piece in re.split("( )", word) if piece]
    return " ".join(pieces)


def join_words(line: str) -> str:
    """Invert `format_words`: the text whose segmentation `line` is. Raises ValueError for a line that no
    segmentation gives (an empty word: a separator at either end, or after a space word without another)."""
    words, i = [], 0
    while i < len(line):
        if line[i] == " ":  # a word starting with a space is a literal space
            words.append(" ")
            i += 1
        else:
            end = line.find(" ", i)
            end = len(line) if end < 0 else end
            words.append(line[i:end])
            i = end
        if i < len(line):
            if line[i] != " " or i + 1 == len(line):
                raise ValueError(f"not segmenter output at character {i}: {excerpt(line)}")
            i += 1  # the separator
    return "".join(words)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--join", action="store_true", help="the inverse: read segmented lines, write the text back")
    p.add_argument("--user-dict", metavar="FILE", help="user dictionary: one word per line, optional TAB weight "
                   "(charformer.tasks.lexicon)")
    p.add_argument("--dict-mode", choices=MODES, default="force", help="force: every leftmost-longest dictionary "
                   "match is one word; prefer: its tags get a bonus (default force)")
    p.add_argument("--dict-bonus", type=float, default=DEFAULT_BONUS, help="prefer mode: nats per character of a "
                   f"weight-1 dictionary word (default {DEFAULT_BONUS})")
    p.add_argument("--standard", metavar="NAME", help="for a multi-criteria segmenter: the segmentation standard "
                   "to follow (one it was trained on, e.g. ctb6)")
    p.add_argument("--no-protect", action="store_true", help="allow cuts inside numbers, Latin words, URLs and "
                   "e-mail addresses (charformer.tasks.constraints)")
    args, own = parse_tool_args(p, argv)
    if own["join"]:
        for n, (text, ending) in enumerate(read_lines(args.file), 1):
            try:
                write(join_words(text) + ending)
            except ValueError as e:
                raise CharformerError(f"{args.file or '<stdin>'}:{n}: {e}") from None
        return 0
    segmenter = Segmenter.ensemble(load_for(args, "cws"), args.ckpt, user_dict=own["user_dict"],
                                   dict_mode=own["dict_mode"], dict_bonus=own["dict_bonus"],
                                   protect=not own["no_protect"], batch_size=args.batch_size,
                                   standard=own["standard"])
    for lines in read_windows(args.file, args.window_chars):
        words = segmenter.segment([text for text, _ in lines], progress=show_progress(lines))
        write("".join(format_words(w) + ending for w, (_, ending) in zip(words, lines)))
    return 0


if __name__ == "__main__":
    run_cli(main)
