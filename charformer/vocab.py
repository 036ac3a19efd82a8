"""Character vocabulary: one id per Unicode code point, plus reserved special tokens.

There is no tokenizer in front of the model: every code point is a token, so any text round-trips exactly
(`decode(encode(s)) == s` for characters in the vocabulary). Ids 0..6 are reserved for the special tokens
below; characters follow in code-point order, so the same character set always gets the same ids, whatever
order the corpus presented them in. A vocabulary can be cut to the most frequent characters (`min_freq`,
`max_size`, or the smallest set that covers a share of the corpus, `coverage`); anything outside it encodes to
`[UNK]`.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable

from .errors import CharformerError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]")
PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID, CLS_ID, SEP_ID = range(len(SPECIAL_TOKENS))
NORMALIZATIONS = (None, "NFC", "NFKC")


class CharVocab:
    """Maps characters (code points) to ids and back.

    Build one with `CharVocab.build(texts, ...)`, or `CharVocab.load(path)`. Ids are ints in
    ``[0, len(vocab))``; ``PAD_ID..SEP_ID`` are the special tokens, in the order of `SPECIAL_TOKENS`.
    """

    def __init__(self, chars: Iterable[str], normalization: str | None = None):
        chars = sorted(set(chars))
        bad = [c for c in chars if len(c) != 1]
        if bad:
            raise CharformerError(f"vocabulary entries must be single code points, got {bad[:5]!r}")
        if normalization not in NORMALIZATIONS:
            raise CharformerError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.normalization = normalization
        self.itos: list[str] = list(SPECIAL_TOKENS) + chars
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(chars, start=len(SPECIAL_TOKENS))}

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        *,
        min_freq: int = 1,
        max_size: int | None = None,
        coverage: float | None = None,
        normalization: str | None = None,
    ) -> "CharVocab":
        """Build a vocabulary from an iterable of strings.

        Args:
            min_freq: keep characters seen at least this many times.
            max_size: keep at most this many characters (specials not counted), most frequent first; ties broken
                by code point so the result is deterministic.
            coverage: in (0, 1]; keep the fewest most-frequent characters whose counts cover this share of the
                corpus (e.g. 0.9999 drops the rarest characters that make up 0.01% of the text).
            normalization: None (default: no change, so tagged corpora round-trip exactly), "NFC" or "NFKC".

        Raises CharformerError if the texts contain no characters or an option is out of range.
        """
        if normalization not in NORMALIZATIONS:
            raise CharformerError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(unicodedata.normalize(normalization, text) if normalization else text)
        if not counts:
            raise CharformerError("cannot build a vocabulary from an empty corpus")
        if coverage is not None and not 0 < coverage <= 1:
            raise CharformerError(f"coverage must be in (0, 1], got {coverage}")
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # most frequent first, ties by code point
        ranked = [(c, n) for c, n in ranked if n >= min_freq]
        if max_size is not None:
            ranked = ranked[:max_size]
        if coverage is not None:
            total, kept, covered = sum(counts.values()), 0, 0
            for _, n in ranked:
                if covered >= coverage * total:
                    break
                covered += n
                kept += 1
            ranked = ranked[:kept]
        return cls((c for c, _ in ranked), normalization=normalization)

    # ------------------------------------------------------------------------------------------ mapping
    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, ch: str) -> bool:
        return ch in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocab) and self.itos == other.itos and self.normalization == other.normalization

    def normalize(self, text: str) -> str:
        """Apply the vocabulary's Unicode normalization (identity when it has none)."""
        return unicodedata.normalize(self.normalization, text) if self.normalization else text

    def encode(self, text: str) -> list[int]:
        """Text -> list of ids, one per code point (after normalization); unknown characters -> `UNK_ID`."""
        get = self.stoi.get
        return [get(c, UNK_ID) for c in self.normalize(text)]

    def encode_aligned(self, text: str) -> list[int]:
        """One id per code point of `text`, each character normalized on its own, so that ids stay aligned with
        the characters (for per-character tags) even where normalization would merge or split characters; a
        character that is unknown or does not normalize to a single code point -> `UNK_ID`. Equals `encode`
        for a vocabulary without normalization."""
        if not self.normalization:
            return self.encode(text)
        get = self.stoi.get
        return [get(n, UNK_ID) if len(n := self.normalize(c)) == 1 else UNK_ID for c in text]

    def decode(self, ids: Iterable[int], *, keep_special: bool = False) -> str:
        """Ids -> text. Special tokens are dropped, or written as their names (``[UNK]``) with `keep_special`."""
        n_special = len(SPECIAL_TOKENS)
        out = []
        for i in ids:
            i = int(i)
            if i >= n_special:
                out.append(self.itos[i])
            elif keep_special:
                out.append(self.itos[i])
        return "".join(out)

    def coverage(self, text: str) -> float:
        """Share of the characters of `text` (after normalization) that are in the vocabulary, in [0, 1]."""
        text = self.normalize(text)
        if not text:
            return 1.0
        return sum(c in self.stoi for c in text) / len(text)

    # ---------------------------------------------------------------------------------------- save/load
    def to_dict(self) -> dict:
        return {
            "format": "charformer.vocab",
            "version": 1,
            "special_tokens": list(SPECIAL_TOKENS),
            "normalization": self.normalization,
            "chars": self.itos[len(SPECIAL_TOKENS):],
        }

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as UTF-8 JSON (characters stored literally, readable by eye)."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=0) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "CharVocab":
        """Read a vocabulary written by `save`. Raises CharformerError if the file is missing or malformed."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CharformerError(f"{path}: vocabulary file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CharformerError(f"{path}: not a valid vocabulary JSON file ({e})") from None
        if not isinstance(data, dict) or data.get("format") != "charformer.vocab":
            raise CharformerError(f"{path}: not a charformer vocabulary (missing 'format': 'charformer.vocab')")
        if data.get("special_tokens") != list(SPECIAL_TOKENS):
            raise CharformerError(f"{path}: special tokens {data.get('special_tokens')} differ from {list(SPECIAL_TOKENS)}")
        chars = data.get("chars")
        if not isinstance(chars, list) or chars != sorted(set(chars)):
            raise CharformerError(f"{path}: 'chars' must be a sorted list of distinct characters")
        return cls(chars, normalization=data.get("normalization"))
