"""Deterministic word-level instruction tokenizer.

The vocabulary lives in the package's ``model.yaml`` (``tokenizer.vocab``); a
word's id is its index in that list. Text is Unicode-normalised (NFKC),
lower-cased, every punctuation or symbol character is replaced by a space, and
the remainder is split on whitespace. Unknown words map to the UNK id; the
sequence is truncated or padded (with the PAD id) to ``max_len``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vla_runtime.core.model_spec import TokenizerSpec


@dataclass(frozen=True)
class TokenizedText:
    """Tokenizer output, batch of one, ready to feed.

    Attributes:
        ids: ``(1, max_len)`` int64 token ids.
        mask: ``(1, max_len)`` int64, 1 for real tokens and 0 for padding.
        words: The words after normalisation (before truncation).
        n_unknown: How many of the kept words were unknown.
        truncated: True when words were dropped to fit ``max_len``.
    """

    ids: np.ndarray
    mask: np.ndarray
    words: tuple[str, ...]
    n_unknown: int
    truncated: bool


class WordTokenizer:
    """Word-level tokenizer with a fixed vocabulary.

    Args:
        vocab: Words; a word's id is its index. Must hold ``pad_token`` and ``unk_token``.
        max_len: Output length.
        pad_token: Padding token.
        unk_token: Unknown-word token.
        lowercase: Lower-case before splitting.
    """

    def __init__(
        self,
        vocab: Sequence[str],
        max_len: int,
        pad_token: str = "<pad>",
        unk_token: str = "<unk>",
        lowercase: bool = True,
    ) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self._ids: dict[str, int] = {}
        for i, w in enumerate(vocab):
            if w in self._ids:
                raise ValueError(f"duplicate vocab entry {w!r}")
            self._ids[w] = i
        for tok in (pad_token, unk_token):
            if tok not in self._ids:
                raise ValueError(f"special token {tok!r} is not in the vocab")
        self.vocab: tuple[str, ...] = tuple(vocab)
        self.max_len = max_len
        self.pad_id = self._ids[pad_token]
        self.unk_id = self._ids[unk_token]
        self.lowercase = lowercase

    @classmethod
    def from_spec(cls, spec: TokenizerSpec) -> WordTokenizer:
        """Build from the ``tokenizer`` block of a model spec."""
        return cls(spec.vocab, spec.max_len, spec.pad_token, spec.unk_token, spec.lowercase)

    @property
    def vocab_size(self) -> int:
        """Number of entries in the vocabulary."""
        return len(self.vocab)

    def words(self, text: str) -> list[str]:
        """Normalise and split ``text`` into words."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        t = unicodedata.normalize("NFKC", text)
        if self.lowercase:
            t = t.lower()
        t = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in t)
        return t.split()

    def encode(self, text: str) -> TokenizedText:
        """Tokenize one instruction.

        Args:
            text: The instruction.

        Returns:
            Ids and mask of shape ``(1, max_len)``, int64.
        """
        words = self.words(text)
        kept = words[: self.max_len]
        ids = np.full((1, self.max_len), self.pad_id, dtype=np.int64)
        mask = np.zeros((1, self.max_len), dtype=np.int64)
        n_unk = 0
        for i, w in enumerate(kept):
            tid = self._ids.get(w)
            if tid is None:
                tid = self.unk_id
                n_unk += 1
            ids[0, i] = tid
        mask[0, : len(kept)] = 1
        return TokenizedText(ids, mask, tuple(words), n_unk, len(words) > self.max_len)

    def decode(self, ids: np.ndarray) -> list[str]:
        """Ids → words, dropping padding (for logs and tests)."""
        flat = np.asarray(ids).reshape(-1)
        out = []
        for i in flat:
            i = int(i)
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"token id {i} is outside the vocab (size {len(self.vocab)})")
            if i != self.pad_id:
                out.append(self.vocab[i])
        return out
