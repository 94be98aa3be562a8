"""Local training and evaluation on tensors already on the device.

Small-batch training on a CPU is bound by per-step overhead, so the data stay as whole
tensors and each batch is one index into them: no DataLoader, no per-sample Python.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

# Held by code that seeds and then draws from torch's global generator (a model's initial weights,
# LoRA's dropout): edge nodes sharing a process (``--count``) train side by side, and one's draws
# must not interleave with another's, or it would not train as it would alone.
GLOBAL_RNG = threading.RLock()


def seed_global(seed: int) -> None:
    """``torch.manual_seed`` (hold ``GLOBAL_RNG``), without CUDA's part until CUDA has started:
    before, ``manual_seed`` queues a CUDA seeding for when it starts, with a formatted stack trace
    each time (on a host without CUDA the queue grows with every model built, and the first costs
    milliseconds of reading source files). Code that draws on CUDA (LoRA's dropout) seeds after
    its model is there, when CUDA has started. (Asking whether CUDA is available would start its
    driver, after which a forked process cannot use it.)"""
    if torch.cuda.is_initialized():
        torch.manual_seed(seed)
    else:
        torch.random.default_generator.manual_seed(seed)

if TYPE_CHECKING:
    from fl.strategy.client import TrainHook


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


@dataclass(frozen=True)
class ClientData:
    """One client's own train and test split, as tensors on its device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_public: torch.Tensor | None = None  # distillation: the job's public set (inputs only)

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.y_test.shape[0])


@dataclass(frozen=True)
class TrainStats:
    num_samples: int
    loss: float  # mean training loss over the last epoch


@dataclass(frozen=True)
class EvalResult:
    correct: int
    loss_sum: float
    num_samples: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.num_samples if self.num_samples else 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.num_samples if self.num_samples else 0.0


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    momentum: float = 0.0,
    seed: int = 0,
    hook: TrainHook | None = None,
    shared_keys: Sequence[str] = (),
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
) -> TrainStats:
    """Plain SGD over ``epochs`` shuffled passes; the shuffle is seeded, so runs repeat.

    ``hook`` (from the round's ``Strategy.configure_train``) may change the gradients of the
    ``shared_keys`` parameters before each step (FedProx's proximal term) or make the training
    DP-SGD (``fl.privacy.train_private``); without one, or with one that has nothing to do,
    training is exactly as before. ``regularizer`` adds a term to each step's loss (distillation's
    distance from the consensus, ``fl.distill.DistillTerm``); the reported loss is the
    cross-entropy alone."""
    if hook is not None and hook.dpsgd:  # DP-SGD: per-example clipping and noise (Opacus)
        from fl.privacy import train_private

        samples, loss = train_private(model, x, y, epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                                      seed=seed, clip_norm=hook.dpsgd_clip, noise_multiplier=hook.dpsgd_noise)
        return TrainStats(num_samples=samples, loss=loss)
    n = int(y.shape[0])
    if n == 0:
        raise ValueError("no training samples")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    generator = torch.Generator().manual_seed(seed)
    before_step = hook.start(model, shared_keys) if hook is not None else None
    model.train()
    loss_sum = torch.zeros((), device=x.device)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        loss_sum.zero_()
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            (loss + regularizer(model) if regularizer is not None else loss).backward()
            if before_step is not None:
                before_step()
            optimizer.step()
            loss_sum += loss.detach() * batch.numel()
    return TrainStats(num_samples=n, loss=float(loss_sum) / n)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128) -> EvalResult:
    """Accuracy and summed cross-entropy of ``model`` on ``(x, y)``.

    Batches of 128 keep each activation (the CNN's largest: 128×32×28×28 floats, 13 MB) under
    glibc's 32 MB mmap ceiling, so its memory is reused from the heap: a batch of 1024 maps and
    page-faults ~100 MB afresh on every call, which made evaluation ~1.7× slower alone and ~4×
    slower beside other training processes."""
    model.eval()
    correct = 0
    loss_sum = 0.0
    for start in range(0, int(y.shape[0]), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    return EvalResult(correct=correct, loss_sum=loss_sum, num_samples=int(y.shape[0]))


def summarize(results: list[EvalResult]) -> dict[str, float]:
    """Per-client mean/min/max accuracy (over clients with test samples: a client with a single
    sample trains on it), the sample-weighted accuracy and the mean loss."""
    accs = [r.accuracy for r in results if r.num_samples] or [r.accuracy for r in results]
    total = sum(r.num_samples for r in results)
    return {
        "acc_weighted": sum(r.correct for r in results) / total if total else 0.0,
        "acc_mean": sum(accs) / len(accs),
        "acc_min": min(accs),
        "acc_max": max(accs),
        "loss": sum(r.loss_sum for r in results) / total if total else 0.0,
    }
