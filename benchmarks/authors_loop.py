"""The baseline the simulator is timed against: one worker at a time in NumPy, like the authors' code.

The RSA authors' published code (Python 2, NumPy, one sequential process;
docs/protocol.md) loops over the workers: each draws 32 consecutive samples at a
random offset of its own shard, computes its softmax-regression gradient with
NumPy, steps its own ``(10, 785)`` model, and then the master loops over the m
messages. This module is that loop, written plainly and in float32 (the
simulator's dtype, so the comparison is of the code, not of the precision).
It is a timing baseline only: the ground truth for correctness is
``tests/reference.py``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["AuthorsLoop"]


def softmax_grad(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Batch-mean cross-entropy gradient of a ``(C, n)`` softmax model on ``x (b, n)``."""
    logits = x @ w.T
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    probs[np.arange(len(y)), y] -= 1.0
    return probs.T @ x / len(y)


class AuthorsLoop:
    """Per-worker NumPy loop for RSA (l1) and Ideal SGD in the paper's setting.

    Parameters
    ----------
    shards_x, shards_y : per-worker feature arrays ``(n_i, n)`` (bias column included) and labels
    classes : number of classes
    byzantine : the last ``byzantine`` workers send ``c * 1`` (same-value attack)
    """

    def __init__(
        self,
        shards_x: list[np.ndarray],
        shards_y: list[np.ndarray],
        classes: int,
        *,
        byzantine: int,
        batch: int = 32,
        lam: float = 0.07,
        lr: float = 1e-3,
        mu: float = 0.01,
        c: float = 100.0,
        seed: int = 0,
    ) -> None:
        self.xs = [np.ascontiguousarray(s, dtype=np.float32) for s in shards_x]
        self.ys = shards_y
        self.m = len(shards_x)
        self.regular = self.m - byzantine
        self.batch, self.lam, self.lr, self.mu, self.c = batch, lam, lr, mu, c
        n = self.xs[0].shape[1]
        self.x0 = np.zeros((classes, n), dtype=np.float32)
        self.local = [np.zeros((classes, n), dtype=np.float32) for _ in range(self.m)]
        self.rng = np.random.default_rng(seed)
        self.k = 0

    def _batch(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.ys[i])
        if n < self.batch:  # a shard smaller than a batch (m = 1000 on 4000 samples): wrap around
            rows = (self.rng.integers(0, n) + np.arange(self.batch)) % n
            return self.xs[i][rows], self.ys[i][rows]
        start = self.rng.integers(0, n - self.batch + 1)
        return self.xs[i][start : start + self.batch], self.ys[i][start : start + self.batch]

    def rsa_step(self) -> None:
        self.k += 1
        alpha = np.float32(self.lr / math.sqrt(self.k))
        messages = []
        for i in range(self.regular):
            x, y = self._batch(i)
            g = softmax_grad(self.local[i], x, y)
            self.local[i] = self.local[i] - alpha * (g / self.m + self.lam * np.sign(self.local[i] - self.x0))
            messages.append(self.local[i])
        for _ in range(self.m - self.regular):
            messages.append(np.full_like(self.x0, self.c))
        pull = np.zeros_like(self.x0)
        for msg in messages:
            pull += np.sign(self.x0 - msg)
        self.x0 = self.x0 - alpha * (self.lam * pull + self.mu * self.x0)

    def sgd_step(self) -> None:
        """Ideal SGD: the mean of the regular workers' gradients (each with mu x), one worker at a time."""
        self.k += 1
        alpha = np.float32(self.lr / math.sqrt(self.k))
        total = np.zeros_like(self.x0)
        for i in range(self.regular):
            x, y = self._batch(i)
            total += softmax_grad(self.x0, x, y) + self.mu * self.x0
        self.x0 = self.x0 - alpha * total / self.regular
