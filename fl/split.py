"""Split learning: one model cut between an edge node and its supernode, trained batch by batch.

The edge node holds the data and the lower layers (``split_layers`` of them); its supernode holds
the upper layers. Per batch, the edge node sends the activations at the cut (and the labels), the
supernode runs the upper layers, the loss and their backward pass, steps its optimiser and sends
back the gradient at the cut, and the edge node finishes the backward pass through its layers. In
the U-shaped variant (``split_labels=edge``) the last ``head_layers`` and the labels stay on the
edge node too: the supernode sends back its outputs, the edge node computes the loss and sends the
gradient of its head's input, the supernode sends the gradient at the cut. Either way the
gradients are exactly those of training the whole model end to end (each side steps its own
parameters with the same optimiser).

SplitFed (Thapa et al. 2022, its first variant): each edge node trains with its own copy of the
round's upper layers, and at the round's end every copy is averaged, and with ``splitfed`` the
edge nodes' lower layers too. In the engine's terms an edge node's update is its copy of the upper
layers (the supernode hands it back when training ends, and checks it comes back unchanged) plus,
with splitfed, its lower layers; the job's rule combines updates like any others. The U-shaped
head stays on the edge node (personal, as FedPer's).

:class:`ServerHalf` is the supernode's side; :class:`ServerLink` is how a client reaches it: in
the simulation a direct call (:class:`LocalLink`), on the network a bidirectional gRPC stream
(``node.roles.split``). :func:`train_split` is the client's side, the same in both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fl.models import SplitModel, StateDict
from fl.train import TrainStats


@dataclass(frozen=True)
class Cut:
    """Where a split job cuts its model: layers ``[0, lower)`` on the edge node, ``[lower, upper)``
    on the supernode, ``[upper, end)`` (U-shaped only: the head) on the edge node again."""

    lower: int
    upper: int
    layers: int

    @classmethod
    def of(cls, model: SplitModel, split_layers: int, labels_on_edge: bool, head_layers: int) -> "Cut":
        layers = len(model.layer_names)
        upper = layers - head_layers if labels_on_edge else layers
        if not 1 <= split_layers < upper:
            where = f"{layers} layers, {head_layers} of them the edge node's head" if labels_on_edge else f"{layers} layers"
            raise ValueError(f"split_layers={split_layers}: {type(model).__name__} has {where} "
                             f"({', '.join(model.layer_names)}); the supernode must keep at least one")
        return cls(split_layers, upper, layers)

    @property
    def u_shaped(self) -> bool:
        return self.upper < self.layers

    @torch.no_grad()
    def shapes(self, model: SplitModel, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The per-sample shapes of what crosses the cut: the activations going up, and what the
        supernode sends back (the gradient, shaped as the activations; U-shaped also the upper
        layers' outputs)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        activations = model.run(torch.zeros(1, *input_shape, device=device), 0, self.lower)
        outputs = model.run(activations, self.lower, self.upper)
        model.train(was_training)
        return tuple(activations.shape[1:]), tuple(outputs.shape[1:])

    def server_keys(self, model: SplitModel) -> list[str]:
        return model.layer_keys(model.layer_names[self.lower : self.upper])

    def edge_keys(self, model: SplitModel) -> list[str]:
        names = model.layer_names
        return model.layer_keys((*names[: self.lower], *names[self.upper :]))

    def shared_keys(self, model: SplitModel, splitfed: bool) -> list[str]:
        """What an update holds: the upper layers, and with SplitFed the lower ones too."""
        names = model.layer_names
        return model.layer_keys(names[: self.upper] if splitfed else names[self.lower : self.upper])


class ServerHalf:
    """The supernode's side for one edge node's round: the upper layers from the round's global
    state, trained by SGD with the job's learning rate and momentum."""

    def __init__(self, model: SplitModel, cut: Cut, state: StateDict, lr: float, momentum: float) -> None:
        self.model, self.cut = model, cut
        self.keys = cut.server_keys(model)
        model.load_part(state, self.keys)
        model.train()
        named = dict(model.named_parameters())
        self.optimizer = torch.optim.SGD([named[k] for k in self.keys if k in named], lr=lr, momentum=momentum)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # U-shaped: (input, output) awaiting a gradient

    def _forward(self, activations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = activations.detach().requires_grad_(True)
        return inputs, self.model.run(inputs, self.cut.lower, self.cut.upper)

    def step(self, activations: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Labels here: the loss, one optimiser step; the gradient at the cut and the loss."""
        if self.cut.u_shaped:
            raise ValueError("this split job keeps its labels on the edge node (U-shaped): send activations only")
        inputs, logits = self._forward(activations)
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return inputs.grad, float(loss.detach())

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        """U-shaped: the upper layers' output, kept until its gradient comes back."""
        if not self.cut.u_shaped:
            raise ValueError("this split job keeps its labels on the supernode: send activations with labels")
        inputs, outputs = self._forward(activations)
        self._pending = (inputs, outputs)
        return outputs.detach()

    def backward(self, grad_outputs: torch.Tensor) -> torch.Tensor:
        """U-shaped: the backward pass from the head's input gradient, one optimiser step; the
        gradient at the cut."""
        if self._pending is None:
            raise ValueError("a gradient arrived with no forward pass waiting for it")
        inputs, outputs = self._pending
        self._pending = None
        if grad_outputs.shape != outputs.shape:
            raise ValueError(f"the gradient has shape {tuple(grad_outputs.shape)}, the outputs {tuple(outputs.shape)}")
        self.optimizer.zero_grad(set_to_none=True)
        outputs.backward(grad_outputs)
        self.optimizer.step()
        return inputs.grad

    def state(self) -> StateDict:
        """The trained upper layers (detached CPU copies): the supernode's part of the update."""
        own = self.model.state_dict()
        return {k: own[k].detach().to("cpu", copy=True).contiguous() for k in self.keys}


class ServerLink(ABC):
    """How the client reaches its server half (directly, or over a gRPC stream)."""

    @abstractmethod
    def step(self, activations: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]: ...

    @abstractmethod
    def forward(self, activations: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def backward(self, grad_outputs: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def finish(self) -> StateDict:
        """End training; the server half's trained upper layers."""


class LocalLink(ServerLink):
    """The server half in this process (the simulation)."""

    def __init__(self, half: ServerHalf) -> None:
        self.half = half

    def step(self, activations: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        return self.half.step(activations, labels)

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.half.forward(activations)

    def backward(self, grad_outputs: torch.Tensor) -> torch.Tensor:
        return self.half.backward(grad_outputs)

    def finish(self) -> StateDict:
        return self.half.state()


def train_split(model: SplitModel, cut: Cut, link: ServerLink, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
                lr: float, batch_size: int, momentum: float = 0.0, seed: int = 0) -> tuple[TrainStats, StateDict]:
    """The edge node's side of a split round: the same seeded shuffle and SGD as ``train_local``,
    with the upper layers behind ``link``. Returns the stats and the server half's trained layers."""
    n = int(y.shape[0])
    if n == 0:
        raise ValueError("no training samples")
    named = dict(model.named_parameters())
    own = [named[k] for k in cut.edge_keys(model) if k in named]
    optimizer = torch.optim.SGD(own, lr=lr, momentum=momentum)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    loss_sum = 0.0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        loss_sum = 0.0
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            activations = model.run(x[batch], 0, cut.lower)
            optimizer.zero_grad(set_to_none=True)
            if cut.u_shaped:
                outputs = link.forward(activations.detach()).to(x.device).requires_grad_(True)
                loss = F.cross_entropy(model.run(outputs, cut.upper), y[batch])
                loss.backward()  # the head's gradients, and the gradient of its input
                grad = link.backward(outputs.grad)
                value = float(loss.detach())
            else:
                grad, value = link.step(activations.detach(), y[batch])
            activations.backward(grad.to(x.device))
            optimizer.step()
            loss_sum += value * batch.numel()
    return TrainStats(num_samples=n, loss=loss_sum / n), link.finish()
