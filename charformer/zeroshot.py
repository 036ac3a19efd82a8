"""Zero-shot classification by likelihood: no labelled data, only a pretrained language model and one word per
label.

    printf '1\\t好\\n0\\t差\\n' > labels.tsv
    charformer zeroshot --ckpt out/zh_mlm --labels labels.tsv --pattern '{text}总之很[MASK]。' < reviews.txt

Each text is put into the pattern; each label's verbaliser fills the blank, and the label whose verbaliser the
model finds most likely is printed, one label per input line (an empty line gives an empty line). A masked LM
(pretrain.py --objective mlm) scores the verbaliser's characters at the blank; a causal LM (--objective clm)
scores them as the continuation of what precedes the blank, which must then come after ``{text}``. How the
rows are built and scored, and the paper it follows: `charformer.finetuning.cloze`. ``--probs`` adds each
label's probability (softmax over the labels' scores), in the order of the labels file. The input is streamed
(`charformer.tasks.streaming`): output is written a window of lines at a time, in input order.

--labels FILE: ``LABEL<TAB>VERBALISER`` per line (or a bare LABEL, its own verbaliser); all verbalisers have the
same number of characters.
"""

from __future__ import annotations

import argparse

import torch

from .checkpoint import load_checkpoint, read_meta
from .errors import CharformerError, run_cli
from .finetuning.cloze import ClozeClassifier, ClozeHead, encode_pattern, read_verbalizers
from .quantize import inference_device
from .tasks.predict import classify_texts
from .tasks.streaming import WINDOW_CHARS, read_windows
from .tasks.tool import show_progress, write


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="pretrained checkpoint (pretrain.py --out), masked or causal LM")
    p.add_argument("--labels", required=True, help="labels and their verbalisers (see above)")
    p.add_argument("--pattern", default="{text}[MASK]", help="the text's frame: one {text} and one [MASK] "
                   "(default: the verbaliser right after the text)")
    p.add_argument("file", nargs="?", help="input file, one text per line (default: stdin)")
    p.add_argument("--probs", action="store_true", help="add each label's probability after the label")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise CharformerError(f"--batch-size must be >= 1, got {args.batch_size}")
    if "task" in read_meta(args.ckpt)[0]:
        raise CharformerError(f"{args.ckpt}: a fine-tuned task checkpoint; zero-shot takes a pretrained LM")
    body, vocab, _ = load_checkpoint(args.ckpt, device=inference_device(args.device, False))
    verbalizers = read_verbalizers(args.labels)
    head = ClozeHead(list(verbalizers), encode_pattern(args.pattern, verbalizers, vocab))
    model = ClozeClassifier(body, head).to(next(body.parameters()).device).eval()
    for lines in read_windows(args.file, WINDOW_CHARS):
        filled = [i for i, (text, _) in enumerate(lines) if text]
        with torch.inference_mode():
            probs = classify_texts(model, vocab, [lines[i][0] for i in filled], batch_size=args.batch_size,
                                   progress=show_progress(lines))
        out = [ending for _, ending in lines]
        for i, row in zip(filled, probs):
            label = head.labels[int(row.argmax())]
            extra = "".join(f"\t{p:.4f}" for p in row.tolist()) if args.probs else ""
            out[i] = f"{label}{extra}{lines[i][1]}"
        write("".join(out))
    return 0


if __name__ == "__main__":
    run_cli(main)
