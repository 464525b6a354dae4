"""Composites for training: normalisers and losses, built from primitives so they get
gradients, fusion and lowering for free."""
from __future__ import annotations

from ..errors import DTypeError, ShapeError
from ..ir import Node, as_node
from ..shapes import fmt_shape, norm_axes
from . import elementwise as ew
from .index import one_hot
from .reduce import max, mean, sum
from .shape import reshape


def _shift(x: Node, axes: tuple) -> Node:
    """The max along ``axes``, or 0 where it is infinite (an all -inf row stays -inf, not nan)."""
    m = max(x, axes, keepdims=True)
    return ew.stop_gradient(ew.where(ew.abs(m) < float("inf"), m, 0))


def logsumexp(x, axis=None, keepdims: bool = False) -> Node:
    """log(sum(exp(x))), shifted by the max so it never overflows."""
    x = as_node(x)
    axes = norm_axes(axis, x.ndim)
    m = _shift(x, axes)
    out = ew.log(sum(ew.exp(x - m), axes, keepdims=True)) + m
    return out if keepdims else reshape(out, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def log_softmax(x, axis: int = -1) -> Node:
    x = as_node(x)
    return x - logsumexp(x, axis, keepdims=True)


def softmax(x, axis: int = -1) -> Node:
    x = as_node(x)
    e = ew.exp(x - _shift(x, norm_axes(axis, x.ndim)))
    return e / sum(e, axis, keepdims=True)


def softmax_cross_entropy(logits, labels) -> Node:
    """Mean cross-entropy over the batch. ``labels`` are class indices (int, shape
    ``logits.shape[:-1]``) or probabilities of the same shape as ``logits``."""
    logits, labels = as_node(logits), as_node(labels)
    if labels.dtype.kind in "iu":
        if labels.shape != logits.shape[:-1]:
            raise ShapeError(f"softmax_cross_entropy: labels {fmt_shape(labels.shape)} "
                             f"do not match logits {fmt_shape(logits.shape)}")
        target = one_hot(labels, logits.shape[-1], logits.dtype)
    elif labels.dtype.kind == "f":
        if labels.shape != logits.shape:
            raise ShapeError(f"softmax_cross_entropy: targets {fmt_shape(labels.shape)} "
                             f"do not match logits {fmt_shape(logits.shape)}")
        target = labels
    else:
        raise DTypeError(f"softmax_cross_entropy: labels of dtype {labels.dtype}")
    return -mean(sum(target * log_softmax(logits, -1), -1))


def mse(pred, target) -> Node:
    """Mean squared error over all elements."""
    pred = as_node(pred)
    d = pred - as_node(target, pred)
    return mean(d * d)
