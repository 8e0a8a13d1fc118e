"""Instruction tokenizers: the word list of schema-1 packages, and a policy's own ``tokenizer.json``.

:class:`WordTokenizer`: the vocabulary lives in the package's ``model.yaml`` (``tokenizer.vocab``); a
word's id is its index in that list. Text is Unicode-normalised (NFKC),
lower-cased, every punctuation or symbol character is replaced by a space, and
the remainder is split on whitespace. Unknown words map to the UNK id; the
sequence is truncated or padded (with the PAD id) to ``max_len``.

:class:`HfTokenizer` (``tokenizer.kind: hf_tokenizers``): the checkpoint's Hugging Face tokenizer file,
run through the ``tokenizers`` library (Rust; wheels for x86_64 and aarch64, no torch), padded and
truncated as the policy's own tokenizer step does, after :class:`PromptFormat` has turned the task
(and, for π0.5, the normalised state) into the prompt text. Its ids equal LeRobot's on the same
prompt (the fixtures' ``reference.npz`` record LeRobot's, and the tests compare).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla_runtime.core.model_spec import HfTokenizerSpec, PromptSpec, TokenizerSpec


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

    def encode_prompt(self, task: str, normalised_state: np.ndarray | None = None) -> TokenizedText:
        """Tokenize an instruction (a word list has no prompt format: the same as :meth:`encode`)."""
        return self.encode(task)

    @property
    def needs_state(self) -> bool:
        """Whether the prompt depends on the robot state (never, for a word list)."""
        return False

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


def state_bins(normalised: np.ndarray, bins: int = 256) -> np.ndarray:
    """π0.5's state tokens: each normalised dim → the index of its bin among ``bins`` equal bins of [-1, 1].

    ``k = digitize(x, linspace(-1, 1, bins + 1)[:-1]) − 1`` (edges compared in float64): ``x < −1`` → −1,
    ``x ≥ 1 − 2/bins`` → ``bins − 1``. Nothing is clipped.
    """
    x = np.asarray(normalised).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"state for the prompt must be finite, got {x.tolist()}")
    return np.digitize(x, np.linspace(-1.0, 1.0, bins + 1)[:-1]) - 1


class PromptFormat:
    """Task instruction (+ normalised state) → the text the tokenizer encodes (:class:`PromptSpec`).

    Args:
        spec: The package's ``tokenizer.prompt`` block.
    """

    def __init__(self, spec: PromptSpec) -> None:
        self.spec = spec
        self.kind = spec.kind

    @property
    def needs_state(self) -> bool:
        """Whether :meth:`text` needs the normalised state."""
        return self.spec.needs_state

    def text(self, task: str, normalised_state: np.ndarray | None = None) -> str:
        """The prompt text.

        Args:
            task: The task instruction.
            normalised_state: The normalised, unpadded state (``pi05_state_prompt`` only).

        Raises:
            TypeError: ``task`` is not a string.
            ValueError: The format needs a state and none (or a non-finite one) was given.
        """
        if not isinstance(task, str):
            raise TypeError(f"task must be str, got {type(task).__name__}")
        if self.kind == "plain":
            return task
        if self.kind == "newline_terminated":
            return task if task.endswith("\n") else task + "\n"
        if normalised_state is None:
            raise ValueError("prompt format 'pi05_state_prompt' needs the normalised robot state")
        clean = task.strip().replace("_", " ").replace("\n", " ")
        tokens = " ".join(str(int(k)) for k in state_bins(normalised_state, self.spec.state_bins))
        return f"Task: {clean}, State: {tokens};\nAction: "


class HfTokenizer:
    """A policy's own Hugging Face tokenizer (``tokenizer.json``) with its prompt format.

    Ids are padded to ``max_len`` (the slow graph's fixed length) on ``padding_side`` with ``pad_id``,
    and truncated to it on ``truncation_side`` when ``truncation`` is set.

    Args:
        path: The ``tokenizer.json`` file.
        spec: The package's ``tokenizer`` block.

    Raises:
        ValueError: The file is missing or is not a tokenizer the library can load (the path is named),
            or the ``tokenizers`` library is not installed.
    """

    def __init__(self, path: str | Path, spec: HfTokenizerSpec) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as e:  # pragma: no cover - a runtime dependency (requirements/runtime.txt)
            raise ValueError("the 'tokenizers' library is needed for tokenizer.kind hf_tokenizers: pip install "
                             "tokenizers") from e
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"tokenizer file not found: {p}")
        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as e:  # the Rust side raises its own exception type
            raise ValueError(f"{p}: not a tokenizers file: {e}") from e
        self.spec = spec
        self.path = p
        self.max_len = spec.max_len
        self.pad_id = spec.pad_id
        if spec.truncation:
            tok.enable_truncation(max_length=spec.max_len, direction=spec.truncation_side)
        else:
            tok.no_truncation()
        tok.enable_padding(direction=spec.padding_side, pad_id=spec.pad_id, length=spec.max_len)
        self._tok = tok
        self.prompt = PromptFormat(spec.prompt)
        unk = getattr(tok.model, "unk_token", None)
        self._unk_id = tok.token_to_id(unk) if isinstance(unk, str) else None

    @classmethod
    def from_spec(cls, spec: HfTokenizerSpec, package_dir: str | Path) -> HfTokenizer:
        """The tokenizer a package's ``tokenizer`` block names (its file relative to ``package_dir``)."""
        return cls(Path(package_dir) / spec.file, spec)

    @property
    def vocab_size(self) -> int:
        """Number of entries in the vocabulary (special tokens included)."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def needs_state(self) -> bool:
        """Whether the prompt depends on the robot state (π0.5)."""
        return self.prompt.needs_state

    def encode(self, text: str) -> TokenizedText:
        """Tokenize prompt text as it is.

        Returns:
            Ids and mask of shape ``(1, max_len)``, int64.

        Raises:
            TypeError: ``text`` is not a string.
            ValueError: Without truncation, a prompt longer than ``max_len`` tokens.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        enc = self._tok.encode(text, add_special_tokens=self.spec.add_special_tokens)
        if len(enc.ids) != self.max_len:
            raise ValueError(f"the prompt is {len(enc.ids)} tokens, the graph takes {self.max_len} (the package "
                             "tokenizer does not truncate): shorten the instruction")
        ids = np.asarray([enc.ids], dtype=np.int64)
        mask = np.asarray([enc.attention_mask], dtype=np.int64)
        n_unk = int(np.sum(ids[mask == 1] == self._unk_id)) if self._unk_id is not None else 0
        return TokenizedText(ids, mask, tuple(enc.tokens), n_unk, bool(enc.overflowing))

    def encode_prompt(self, task: str, normalised_state: np.ndarray | None = None) -> TokenizedText:
        """The task through the prompt format, then :meth:`encode`."""
        return self.encode(self.prompt.text(task, normalised_state))

    def decode(self, ids: np.ndarray) -> str:
        """Ids → text, special tokens and padding dropped (for logs and tests)."""
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=True)


#: Either kind of instruction tokenizer.
InstructionTokenizer = WordTokenizer | HfTokenizer


def make_tokenizer(spec: TokenizerSpec | HfTokenizerSpec, package_dir: str | Path) -> InstructionTokenizer:
    """The tokenizer a package's ``tokenizer`` block describes.

    Raises:
        ValueError: An ``hf_tokenizers`` file that is missing or does not load.
    """
    if isinstance(spec, HfTokenizerSpec):
        return HfTokenizer.from_spec(spec, package_dir)
    return WordTokenizer.from_spec(spec)
