"""Distillation between clients: what travels is each client's outputs on a public set, never its
parameters, so clients may run different architectures in one job.

GFL's ``FED_DISTILLATION`` synchronised the clients' models and let each distil from the others'
outputs on its own data; FedMD (Li & Wang 2019) and FedDF (Lin et al. 2020) exchange outputs on a
shared public (or proxy) set instead, which is what lets architectures differ. Here, each round:

1. a client loads the consensus (the clients' sample-weighted mean logits on the public set, the
   job's "global model"), trains on its own data with loss CE + α·D(its logits on a public batch,
   the consensus for that batch), D the mean squared error of the logits (GFL's ``l2_dist``) or
   the KL divergence of the softmaxes;
2. it sends its logits on the whole public set (a P × classes float32 tensor, named
   ``public_logits``), which the job's rule combines like any update (the mean: exact, so anyone
   can recompute the consensus bit for bit).

The public set is ``distill_public`` samples of the job's dataset chosen by the job's seed and held
out of every client's data; only their inputs are used (no labels travel or are needed). In round
1 the consensus is all zeros, so clients train without the distillation term (the strategy asks
for it from round 2, see ``Strategy.configure_train``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PUBLIC_LOGITS = "public_logits"  # the one tensor a distillation update holds
_PUBLIC_STREAM = 0x7075626C  # seeds the public set apart from the partition's draws ("publ")


def public_indices(num_samples: int, size: int, seed: int) -> np.ndarray:
    """The public set: ``size`` of the dataset's ``num_samples`` indices drawn by the job's seed,
    sorted; the same on every node."""
    if not 1 <= size < num_samples:
        raise ValueError(f"distill_public={size}: the public set must hold between 1 and {num_samples - 1} of the "
                         f"dataset's {num_samples} samples")
    generator = np.random.default_rng([seed, _PUBLIC_STREAM])
    return np.sort(generator.permutation(num_samples)[:size])


@torch.no_grad()
def public_outputs(model: nn.Module, x_public: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``model``'s logits on the public set (evaluation mode), float32, contiguous, on the CPU:
    the client's update."""
    model.eval()
    parts = [model(x_public[start : start + batch_size]).float() for start in range(0, x_public.shape[0], batch_size)]
    return torch.cat(parts).cpu().contiguous()


class DistillTerm:
    """α·D(model(public batch), consensus of that batch), one public batch per training step,
    cycling through a seeded permutation of the public set (``fl.train.train_local`` adds it to
    each step's loss)."""

    def __init__(self, x_public: torch.Tensor, consensus: torch.Tensor, alpha: float, l2: bool,
                 batch_size: int, seed: int) -> None:
        if consensus.shape[0] != x_public.shape[0]:
            raise ValueError(f"the consensus holds outputs for {consensus.shape[0]} public samples, the public set "
                             f"has {x_public.shape[0]}")
        self.x = x_public
        self.target = consensus.to(x_public.device, torch.float32)
        self.alpha, self.l2, self.batch_size = alpha, l2, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0

    def _next_batch(self) -> torch.Tensor:
        if self.position >= self.order.numel():
            self.order = torch.randperm(self.x.shape[0], generator=self.generator).to(self.x.device)
            self.position = 0
        batch = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def __call__(self, model: nn.Module) -> torch.Tensor:
        batch = self._next_batch()
        out, target = model(self.x[batch]), self.target[batch]
        if self.l2:
            distance = F.mse_loss(out, target)
        else:
            distance = F.kl_div(F.log_softmax(out, 1), F.softmax(target, 1), reduction="batchmean")
        return self.alpha * distance
