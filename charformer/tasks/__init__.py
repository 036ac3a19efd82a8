"""Fine-tuning tasks on top of the character encoder: word segmentation (CWS), NER, text classification.

Chinese word segmentation and named-entity recognition are both character tagging (Xue 2003; the NER files are
already one character per line): each character gets a tag such as B/M/E/S, a decoder keeps the tag sequence
valid, and the tags are read back as spans (words, or typed entities). Classification pools the characters of a
text into one vector. Modules, in reading order:

* `schemes`: tagging schemes (BMES, BIO, BIOES): spans <-> tags, which tag may follow which.
* `readers`: the file formats (segmented lines, CoNLL columns, TSV/CSV), with errors naming file and line.
* `metrics`: SIGHAN word P/R/F1 with OOV/IV recall, entity-level P/R/F1, accuracy / macro-F1 / confusion.
* `viterbi`, `crf`: decoding constrained to valid tag sequences; an optional linear-chain CRF.
* `windows`: sentences longer than the model's block, cut into overlapping windows and stitched.
* `heads`: the task heads; `model`: body + head, freezing; `checkpoint`: task checkpoints as files.
* `predict`: batched prediction, shared by the dev evaluation and the command-line tools `charformer.segment`,
  `.tag` and `.classify`.
* `objectives`: what `charformer.train.fit` needs for each task (batches, loss, dev evaluation).
* `tool`: what those command-line tools share (options, loading, exact line I/O).
* `jobs`: what each task (and continued language-model training, ``lm``) brings to a run of finetune.py.
"""
