"""HiPP itself: visual sensitivity, state, hierarchical policy, rewards, SynFlow gate and GRPO.

Math lives in small pure modules (``gate``, ``grpo``, ``planmap``, ``synflow``, ``preferences``);
``trainer`` orchestrates them.
"""
