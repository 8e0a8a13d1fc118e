"""Word-level tokenizer: normalisation, UNK, padding, truncation."""

from __future__ import annotations

import numpy as np
import pytest

from vla_runtime.core.model_spec import TokenizerSpec
from vla_runtime.core.text import WordTokenizer

VOCAB = ["<pad>", "<unk>", "pick", "up", "the", "red", "block", "place", "it"]


@pytest.fixture
def tok() -> WordTokenizer:
    return WordTokenizer(VOCAB, max_len=6)


def test_lowercase_and_punctuation(tok: WordTokenizer) -> None:
    out = tok.encode("Pick UP, the red-block!")
    assert out.words == ("pick", "up", "the", "red", "block")
    np.testing.assert_array_equal(out.ids, [[2, 3, 4, 5, 6, 0]])
    np.testing.assert_array_equal(out.mask, [[1, 1, 1, 1, 1, 0]])
    assert out.ids.dtype == np.int64 and out.mask.dtype == np.int64
    assert out.ids.shape == (1, 6)
    assert not out.truncated and out.n_unknown == 0


def test_unknown_words_map_to_unk(tok: WordTokenizer) -> None:
    out = tok.encode("pick the banana")
    np.testing.assert_array_equal(out.ids[0, :3], [2, 4, tok.unk_id])
    assert out.n_unknown == 1


def test_truncation(tok: WordTokenizer) -> None:
    out = tok.encode("pick up the red block place it")
    assert out.truncated
    assert out.mask.sum() == 6
    np.testing.assert_array_equal(out.ids, [[2, 3, 4, 5, 6, 7]])


def test_empty_text_is_all_padding(tok: WordTokenizer) -> None:
    out = tok.encode("  ?! ")
    assert out.mask.sum() == 0
    assert (out.ids == tok.pad_id).all()


def test_deterministic_and_decode(tok: WordTokenizer) -> None:
    a, b = tok.encode("Place it."), tok.encode("place   IT")
    np.testing.assert_array_equal(a.ids, b.ids)
    assert tok.decode(a.ids) == ["place", "it"]
    with pytest.raises(ValueError, match="token id 99"):
        tok.decode(np.array([99]))


def test_from_spec_and_vocab_checks() -> None:
    t = WordTokenizer.from_spec(TokenizerSpec(max_len=4, vocab=tuple(VOCAB)))
    assert t.vocab_size == len(VOCAB) and t.pad_id == 0 and t.unk_id == 1
    with pytest.raises(ValueError, match="'<unk>'"):
        WordTokenizer(["<pad>", "a"], max_len=3)
    with pytest.raises(ValueError, match="duplicate vocab entry 'a'"):
        WordTokenizer(["<pad>", "<unk>", "a", "a"], max_len=3)
    with pytest.raises(ValueError, match="max_len must be >= 1, got 0"):
        WordTokenizer(VOCAB, max_len=0)
    with pytest.raises(TypeError, match="bytes"):
        WordTokenizer(VOCAB, max_len=3).encode(b"pick")  # type: ignore[arg-type]
