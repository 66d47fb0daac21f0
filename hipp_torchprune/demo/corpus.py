"""A synthetic "pretraining" text corpus for the demo model: a second-order Markov chain.

A pretrained language model's MLPs are busy: next-token statistics never stop rewarding more
capacity, so every row carries something and half of them cannot go for free. The proving-ground
tasks alone use a small part of each MLP (``docs/demo-model.md``, probes 3-9). This corpus is
the cheapest stand-in for pretraining: ``n_words`` made-up words, and for every pair of previous
words a fixed set of ``branching`` next words with Zipf-like probabilities, drawn from a hash of
the pair and the seed. Predicting the next word means memorizing a table of ``n_words ** 2``
contexts, which is MLP work (attention only gathers the two previous words).
"""

from __future__ import annotations

import zlib

import numpy as np

#: Probabilities of the 1st..4th next word of a context (normalized to ``branching`` entries).
ZIPF: tuple[float, ...] = (0.55, 0.25, 0.13, 0.07)


def corpus_words(n_words: int) -> list[str]:
    """The made-up vocabulary: ``["zq000", "zq001", ...]`` (one word-level token each)."""
    return [f"zq{i:03d}" for i in range(n_words)]


def next_words(a: int, b: int, n_words: int, branching: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The candidates (``(branching,)`` word indices, distinct) and probabilities of the word after
    ``a b``: a pure function of the pair, the vocabulary size and the seed."""
    rng = np.random.default_rng([seed, zlib.crc32(f"{a},{b}".encode())])
    cands = rng.choice(n_words, size=branching, replace=False)
    probs = np.array(ZIPF[:branching] if branching <= len(ZIPF) else [1.0] * branching, dtype=np.float64)
    return cands, probs / probs.sum()


def markov_sequences(n: int, length: int, n_words: int = 160, branching: int = 4, seed: int = 0,
                     sample_seed: int = 0) -> list[str]:
    """``n`` sequences of ``length`` words from the chain (the chain is fixed by ``seed``, the
    sampled sequences by ``sample_seed``), each as space-separated words."""
    if length < 3 or n_words < branching:
        raise ValueError(f"length={length} must be >= 3 and n_words={n_words} >= branching={branching}")
    words = corpus_words(n_words)
    rng = np.random.default_rng([sample_seed, 11])
    table: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for _ in range(n):
        seq = [int(w) for w in rng.integers(n_words, size=2)]
        while len(seq) < length:
            key = (seq[-2], seq[-1])
            if key not in table:
                table[key] = next_words(*key, n_words, branching, seed)
            cands, probs = table[key]
            seq.append(int(cands[int(rng.choice(len(cands), p=probs))]))
        out.append(" ".join(words[i] for i in seq))
    return out
