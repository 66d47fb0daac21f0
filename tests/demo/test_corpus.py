"""The synthetic text corpus (a second-order Markov chain) and its examples."""

from __future__ import annotations

import numpy as np
import pytest

from hipp_torchprune.demo.corpus import corpus_words, markov_sequences, next_words
from hipp_torchprune.demo.dataset import LM_PROMPT, lm_examples


def test_next_words_are_a_fixed_function_of_the_pair() -> None:
    cands, probs = next_words(3, 7, 50, 4, seed=0)
    again, _ = next_words(3, 7, 50, 4, seed=0)
    assert np.array_equal(cands, again) and len(set(cands.tolist())) == 4 and np.isclose(probs.sum(), 1.0)
    assert np.allclose(probs, np.array([0.55, 0.25, 0.13, 0.07]))
    assert not np.array_equal(next_words(7, 3, 50, 4, seed=0)[0], cands)  # order matters (second order)
    assert not np.array_equal(next_words(3, 7, 50, 4, seed=1)[0], cands)  # another chain


def test_sequences_follow_the_chain_and_are_seeded() -> None:
    seqs = markov_sequences(20, 10, n_words=30, branching=3, seed=0, sample_seed=5)
    assert seqs == markov_sequences(20, 10, n_words=30, branching=3, seed=0, sample_seed=5)
    assert seqs != markov_sequences(20, 10, n_words=30, branching=3, seed=0, sample_seed=6)
    index = {w: i for i, w in enumerate(corpus_words(30))}
    for seq in seqs:
        ids = [index[w] for w in seq.split(" ")]
        assert len(ids) == 10
        for a, b, c in zip(ids, ids[1:], ids[2:]):
            assert c in next_words(a, b, 30, 3, seed=0)[0]
    with pytest.raises(ValueError):
        markov_sequences(1, 2)


def test_lm_examples_point_at_train_images() -> None:
    ex = lm_examples(n_images=7, n=12, length=6, n_words=20, seed=3)
    assert len(ex) == 12 and all(e.prompt == LM_PROMPT and e.topic == "lm" and 0 <= e.image < 7 for e in ex)
    assert all(len(e.answer.split(" ")) == 6 for e in ex) and lm_examples(7, 0, 6, 20, 3) == []
