"""Baselines for hipp-torchprune (installed separately; found through the ``hipp_torchprune`` entry points).

* methods ``random``, ``wanda``, ``llm-pruner``, ``owl``, ``ecoflap``, ``flap``: MLP-row methods
  with their references' defaults (``hipp_baselines.methods``);
* strategies ``ecoflap``, ``llm-pruner``, ``flap`` and the importance ``flap``;
* method ``slicegpt``: PCA rotation of the residual stream, then slicing (LLaVA).
"""
