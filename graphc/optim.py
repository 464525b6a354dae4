"""Optimizers as graph updates, with the semantics of ``torch.optim``.

``opt.updates(loss)`` returns (param, new_value) pairs for ``gc.function``: the params,
the optimizer's state (momentum buffers, Adam moments, the step count) and the dropout
keys of ``loss``'s graph. State is made of params, so it lives in the compiled step's
param arena and the whole update fuses into the one call.

>>> opt = gc.optim.Adam(model, lr=1e-3, clip_grad_norm=1.0)
>>> step = gc.function([x, y], loss, updates=opt.updates(loss), target="cpu")

``lr`` may be a 0-d float param, for schedules: ``lr = gc.param("lr", 0.1)``, then set
``lr.value`` between steps.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from . import ops
from .autodiff import grad
from .errors import GraphcError
from .ir import Node, as_node, param
from .nn import Module, state_updates
from .ops.collective import BUCKET_BYTES, allreduce_buckets

Params = Module | Iterable[Node]
_ids = itertools.count()


def _params(params: Params) -> list[Node]:
    ps = params.params() if isinstance(params, Module) else list(params)
    for p in ps:
        if not isinstance(p, Node) or p.op.name != "param" or p.dtype.kind != "f":
            raise GraphcError(f"optimizers train float params, got {p!r}")
    if len({p.id for p in ps}) != len(ps):
        raise GraphcError("a param is listed twice")
    return ps


def _sq_norm(g: Node, dtype) -> Node:
    return ops.sum(ops.cast(g * g, dtype))


def global_norm(grads: Sequence[Node]) -> Node:
    """sqrt of the sum of squares of every gradient entry (in the widest float dtype)."""
    dt = np.result_type(*(g.dtype for g in grads))
    total = _sq_norm(grads[0], dt)
    for g in grads[1:]:
        total = total + _sq_norm(g, dt)
    return ops.sqrt(total)


def clip_by_global_norm(grads: Sequence[Node], max_norm: float) -> list[Node]:
    """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6))."""
    coef = ops.minimum(max_norm / (global_norm(grads) + 1e-6), 1.0)
    return [g * ops.cast(coef, g.dtype) for g in grads]


def grad_norms(loss: Node, groups: Mapping[str, Params]) -> dict[str, Node]:
    """Per-group gradient norms, as extra outputs of a step (each one fused reduction; the
    gradients are shared with the optimizer's by common-subexpression elimination).

    >>> norms = gc.optim.grad_norms(loss, {"layer1": l1, "layer2": l2})
    >>> step = gc.function([x, y], [loss, *norms.values()], updates=opt.updates(loss))
    """
    lists = {name: _params(ps) for name, ps in groups.items()}
    flat = [p for ps in lists.values() for p in ps]
    gs = dict(zip((p.id for p in flat), grad(loss, flat)))
    return {name: global_norm([gs[p.id] for p in ps]) for name, ps in lists.items()}


def l1_penalty(params: Params, weight: float) -> Node:
    """weight * sum |p|, to add to a loss (sparsity; its gradient is weight * sign(p))."""
    ps = _params(params)
    return weight * sum((ops.sum(ops.abs(p)) for p in ps[1:]), ops.sum(ops.abs(ps[0])))


def l2_penalty(params: Params, weight: float) -> Node:
    """weight / 2 * sum p², whose gradient weight * p is what ``weight_decay`` adds."""
    ps = _params(params)
    return 0.5 * weight * sum((ops.sum(p * p) for p in ps[1:]), ops.sum(ps[0] * ps[0]))


class Optimizer:
    """Common parts: the params, gradient clipping, state params, the step count.

    ``distributed=True`` (data-parallel training over MPI, ``gc.distributed``): rank 0's params
    are broadcast to every rank now, and each step averages the gradients over the ranks before
    the update (in buckets of up to ``bucket_bytes``, one all-reduce each), so every rank applies
    the same update and the params stay identical."""

    def __init__(self, params: Params, lr, weight_decay: float = 0.0, clip_grad_norm: float | None = None,
                 distributed: bool = False, bucket_bytes: int = BUCKET_BYTES):
        self.params = _params(params)
        if not self.params:
            raise GraphcError("no params to optimize")
        if isinstance(lr, Node) and (lr.shape != () or lr.dtype.kind != "f"):
            raise GraphcError(f"lr must be a number or a 0-d float node, got {lr!r}")
        self.lr, self.weight_decay, self.clip_grad_norm = lr, float(weight_decay), clip_grad_norm
        self.name = f"{type(self).__name__.lower()}{next(_ids)}"
        self._state: dict[tuple[int, str], Node] = {}
        self.step_count = param(f"{self.name}.step", np.int64(0))  # steps taken; torch's `step`
        self.distributed, self.bucket_bytes = distributed, int(bucket_bytes)
        if distributed:  # every rank starts from rank 0's params (ranks may have drawn different ones)
            from . import distributed as dist
            dist.broadcast(self.params)

    def state(self, p: Node, what: str) -> Node:
        """The state param ``what`` of ``p`` (zeros at first), made once and reused."""
        key = (p.id, what)
        if key not in self._state:
            self._state[key] = param(f"{self.name}.{what}.{p.name}", np.zeros(p.shape, p.dtype))
        return self._state[key]

    def state_params(self) -> list[Node]:
        return [self.step_count, *self._state.values()]

    def _lr(self, p: Node) -> Node:
        return ops.cast(self.lr, p.dtype) if isinstance(self.lr, Node) else as_node(np.array(self.lr, p.dtype))

    def updates(self, loss: Node) -> list[tuple[Node, Node]]:
        """Updates of one step on ``loss``: params, optimizer state and dropout keys."""
        grads = grad(loss, self.params)
        if self.distributed:  # the mean over ranks, last layer's bucket first (it is ready first)
            grads = allreduce_buckets(grads[::-1], "mean", self.bucket_bytes)[::-1]
        if self.clip_grad_norm is not None:
            grads = clip_by_global_norm(grads, self.clip_grad_norm)
        out = [(self.step_count, self.step_count + 1)]
        for p, g in zip(self.params, grads):
            out += self._update(p, g)
        return out + state_updates(loss)

    def _update(self, p: Node, g: Node) -> list[tuple[Node, Node]]:
        raise NotImplementedError


class SGD(Optimizer):
    """torch.optim.SGD: g += wd p; b = g at the first step, then momentum b + (1 - dampening) g;
    g = g + momentum b (Nesterov) or b; p -= lr g."""

    def __init__(self, params: Params, lr, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 dampening: float = 0.0, clip_grad_norm: float | None = None, distributed: bool = False,
                 bucket_bytes: int = BUCKET_BYTES):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise GraphcError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, lr, weight_decay, clip_grad_norm, distributed, bucket_bytes)
        self.momentum, self.nesterov, self.dampening = float(momentum), nesterov, float(dampening)

    def _update(self, p, g):
        if self.weight_decay:
            g = g + self.weight_decay * p
        out = []
        if self.momentum:
            buf = self.state(p, "momentum")
            new = self.momentum * buf + (1.0 - self.dampening) * g
            if self.dampening:  # torch starts the buffer at g itself, not (1 - dampening) g
                new = ops.where(self.step_count == 0, g, new)
            out.append((buf, new))
            g = g + self.momentum * new if self.nesterov else new
        return out + [(p, p - self._lr(p) * g)]


class Adam(Optimizer):
    """torch.optim.Adam (L2 ``weight_decay`` added to the gradient), with bias correction
    by the step count t: p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    decoupled = False

    def __init__(self, params: Params, lr=1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, clip_grad_norm: float | None = None, distributed: bool = False,
                 bucket_bytes: int = BUCKET_BYTES):
        super().__init__(params, lr, weight_decay, clip_grad_norm, distributed, bucket_bytes)
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)

    def _update(self, p, g):
        b1, b2 = self.betas
        if self.weight_decay and self.decoupled:
            p0 = p * (1.0 - self._lr(p) * self.weight_decay)
        else:
            p0 = p
            if self.weight_decay:
                g = g + self.weight_decay * p
        m, v = self.state(p, "exp_avg"), self.state(p, "exp_avg_sq")
        m_new = m + (1.0 - b1) * (g - m)  # torch's lerp
        v_new = b2 * v + (1.0 - b2) * g * g
        # bias corrections in float64 scalars, as torch computes them in Python floats
        step_size, bc2_sqrt = (ops.cast(s, p.dtype) for s in self._corrections())
        return [(m, m_new), (v, v_new), (p, p0 - step_size * (m_new / (ops.sqrt(v_new) / bc2_sqrt + self.eps)))]

    def _corrections(self) -> tuple[Node, Node]:
        """lr / (1 - b1^t) and sqrt(1 - b2^t), in float64 as torch computes them in Python floats."""
        b1, b2 = self.betas
        t = ops.cast(self.step_count + 1, np.float64)
        lr = ops.cast(self.lr, np.float64) if isinstance(self.lr, Node) else self.lr
        return lr / (1.0 - b1 ** t), ops.sqrt(1.0 - b2 ** t)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, p *= 1 - lr wd before the step."""

    decoupled = True

    def __init__(self, params: Params, lr=1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, clip_grad_norm: float | None = None, distributed: bool = False,
                 bucket_bytes: int = BUCKET_BYTES):
        super().__init__(params, lr, betas, eps, weight_decay, clip_grad_norm, distributed, bucket_bytes)


__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "global_norm", "clip_by_global_norm", "grad_norms", "l1_penalty",
           "l2_penalty"]
