"""Baselines for hipp-torchprune (installed separately; found through the ``hipp_torchprune`` entry points).

* methods ``random``, ``wanda``, ``llm-pruner``, ``owl``, ``ecoflap``: (strategy, importance) pairs;
* strategy ``ecoflap``: zeroth-order layer importance, ratios inverse to it;
* method ``slicegpt``: PCA rotation of the residual stream, then slicing (LLaVA).
"""
