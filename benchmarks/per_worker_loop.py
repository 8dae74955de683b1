"""The baseline byzrsa's batched model gradients are timed against: one worker at a time, plain autograd.

This is how the peer libraries compute their clients' gradients. ByzFL's
``Client.compute_gradients`` and Blades' ``local_training`` take one
``torch.nn.Module``, and for each client run the module forward on its
minibatch, call ``loss.backward()`` and read the ``.grad`` of every parameter
(ByzFL flattens them into one vector; Blades hands them to the client's
optimiser). Here one module serves all m workers: worker i's flat vector is
copied into the module's parameters (``vector_to_parameters``), gradients are
cleared (``zero_grad``), forward and backward run, and the gradients are
flattened into row i. No optimiser: the step is not part of what is timed.
The module is in training mode, so its dropout draws from torch's global
generator, as the peers' does.

A timing baseline only; correctness is tested against the float64 references
in ``tests/``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PerWorkerLoop"]


class PerWorkerLoop:
    """Per-worker forward/backward of one ``module``: ``grad(w (m, d), x (m, b, ...), y (m, b)) -> (m, d)``."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module.train()
        self.params = list(module.parameters())
        self.dim = sum(p.numel() for p in self.params)

    def grad(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        out = torch.empty(w.shape[0], self.dim, dtype=w.dtype, device=w.device)
        with torch.enable_grad():
            for i in range(w.shape[0]):
                with torch.no_grad():
                    nn.utils.vector_to_parameters(w[i], self.params)
                self.module.zero_grad()
                loss = nn.functional.cross_entropy(self.module(x[i]), y[i])
                loss.backward()
                out[i] = torch.cat([p.grad.reshape(-1) for p in self.params])
        return out
