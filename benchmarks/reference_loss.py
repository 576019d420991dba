"""The fMRLRec objective in its straightforward form, the yardstick for fmrl_sdk/train/loss.py: the
tests hold the fast losses equal to it (values and gradients) and benchmarks/train_speed.py times it."""

import torch
import torch.nn.functional as F

from fmrl_sdk.train.loss import size_weights


def reference_cross_entropy(hidden: torch.Tensor, targets: torch.Tensor, table: torch.Tensor, sizes,
                            weights=None) -> torch.Tensor:
    """Straightforward form: logits at every position, one product per size, padding ignored."""
    losses = []
    for size in sizes:
        logits = hidden[..., :size] @ table[1:, :size].T  # [B, L, N]
        losses.append(F.cross_entropy(logits.flatten(0, 1), targets.flatten() - 1, ignore_index=-1))
    return (torch.stack(losses) * size_weights(sizes, weights).to(hidden.device)).sum()
