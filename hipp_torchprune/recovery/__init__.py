"""Recovery after pruning (METHOD_NOTES §8): the mask stays fixed; the LM head, final norm,
projector and optional LoRA on the last layers train on next-token loss plus POPE-aware terms;
LoRA merges back at the pruned widths."""

from hipp_torchprune.recovery.config import RecoveryConfig, RecoveryError
from hipp_torchprune.recovery.train import RecoveryResult, recover, recover_checkpoint, recovery_loss

__all__ = ["RecoveryConfig", "RecoveryError", "RecoveryResult", "recover", "recover_checkpoint", "recovery_loss"]
