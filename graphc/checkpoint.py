"""Checkpoints: ``gc.save(path, obj)`` and ``gc.load(path, obj)`` in the safetensors format.

A checkpoint holds every param of ``obj`` by a *stable name*, one that comes from the structure
of what is saved, not from the process that built it (layer names such as ``linear3`` count
layers made so far, so they can differ in a new process):

- a ``gc.nn.Module``: the attribute path of each param, as ``torch``'s ``state_dict`` names it
  (``layers.0.W``, ``blocks.attn.Wq``); integer params (dropout keys) included;
- an optimizer: ``step`` and ``<state>.<k>`` (``exp_avg.0``: the state of its k-th param);
- a compiled ``Function``: ``param.<k>``, every param its step reads or updates, in its order;
- a list (``param.<k>``) or dict (``<key>``) of any of these, nested names joined with ``/``.

Metadata: the graphc version, the optimizer step count when there is one, each entry's dtype
and graph name, and whatever the caller adds (``metadata={"epoch": "3"}``). Writes are atomic:
a temporary file, fsync, rename, so a crash mid-save leaves the previous checkpoint intact.
``load`` checks every name, shape and dtype first and raises one error listing every mismatch,
changing nothing; only then does it set the values.

>>> gc.save("ckpt.safetensors", {"model": model, "opt": opt}, metadata={"epoch": "3"})
>>> meta = gc.load("ckpt.safetensors", {"model": model, "opt": opt}); int(meta["epoch"])
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import GraphcError
from .ir import Node

FORMAT = "graphc-checkpoint-1"


def _is_param(x) -> bool:
    return isinstance(x, Node) and x.op.name == "param"


def _module_params(m, prefix: str, out: dict, seen: set) -> None:
    """A module's params by attribute path, depth first in attribute order (torch's order)."""
    from .nn import Module
    for key, v in vars(m).items():
        if key.startswith("_"):
            continue
        items = list(v.items()) if isinstance(v, dict) else list(enumerate(v)) if isinstance(v, (list, tuple)) else None
        for sub, x in items if items is not None else [(None, v)]:
            name = f"{prefix}{key}" if sub is None else f"{prefix}{key}.{sub}"
            if _is_param(x) and x.id not in seen:
                seen.add(x.id)
                out[name] = x
            elif isinstance(x, Module):
                _module_params(x, name + ".", out, seen)


def named_params(obj, prefix: str = "") -> dict[str, Node]:
    """Every param of ``obj`` (Module, optimizer, Function, param, or a list or dict of
    these) by its stable checkpoint name."""
    from .function import Function
    from .nn import Module
    from .optim import Optimizer
    out: dict[str, Node] = {}
    if isinstance(obj, Module):
        _module_params(obj, prefix, out, set())
    elif isinstance(obj, Optimizer):
        out[prefix + "step"] = obj.step_count
        pos = {p.id: k for k, p in enumerate(obj.params)}
        for (pid, what), s in obj._state.items():
            out[f"{prefix}{what}.{pos[pid]}"] = s
    elif isinstance(obj, Function):
        for k, p in enumerate(obj.all_params):
            out[f"{prefix}param.{k}"] = p
    elif _is_param(obj):
        out[prefix.rstrip("/") or "param"] = obj
    elif isinstance(obj, Mapping):
        for key, v in obj.items():
            if not isinstance(key, str) or not key or "/" in key:
                raise GraphcError(f"checkpoint keys must be non-empty strings without '/', got {key!r}")
            if _is_param(v):
                out[prefix + key] = v
            else:
                out.update(named_params(v, f"{prefix}{key}/"))
    elif isinstance(obj, (list, tuple)):
        for k, v in enumerate(obj):
            if _is_param(v):
                out[f"{prefix}param.{k}"] = v
            else:
                out.update(named_params(v, f"{prefix}{k}/"))
    else:
        raise GraphcError(f"cannot checkpoint {type(obj).__name__}: give a gc.nn.Module, an optimizer, a compiled "
                          "Function, a param, or a list or dict of them")
    return out


def _step_count(obj) -> int | None:
    from .optim import Optimizer
    if isinstance(obj, Optimizer):
        return int(obj.step_count.value)
    items = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (list, tuple)) else ()
    for v in items:
        n = _step_count(v)
        if n is not None:
            return n
    return None


def save(path: str | os.PathLike, obj, metadata: Mapping[str, str] | None = None) -> None:
    """Write every param of ``obj`` to ``path`` (safetensors), atomically."""
    from safetensors.numpy import save as st_save

    from ._version import __version__
    from .backends.common.diskcache import write_atomic
    params = named_params(obj)
    if not params:
        raise GraphcError(f"nothing to save: {type(obj).__name__} has no params")
    tensors, names = {}, {}
    for name, p in params.items():
        v = np.array(p.value, order="C")  # (reading .value brings a GPU param up to date; 0-d stays 0-d)
        tensors[name] = v
        names[name] = p.name or ""
    meta = {"format": FORMAT, "graphc": __version__, "names": json.dumps(names),
            "dtypes": json.dumps({k: v.dtype.name for k, v in tensors.items()})}
    step = _step_count(obj)
    if step is not None:
        meta["step"] = str(step)
    for k, v in (metadata or {}).items():
        if k in meta:
            raise GraphcError(f"metadata key {k!r} is graphc's own")
        meta[str(k)] = str(v)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, st_save(tensors, metadata=meta))


def read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays and metadata of a checkpoint; a file that is not one raises GraphcError."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise GraphcError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own errors (and OSError) on damaged files
        raise GraphcError(f"checkpoint {path} is damaged or not a safetensors file: {e}") from None
    return arrays, meta


def load(path: str | os.PathLike, obj, strict: bool = True) -> dict[str, str]:
    """Set every param of ``obj`` from the checkpoint at ``path``; return its metadata.

    Every name, shape and dtype is checked before anything changes: one error lists all
    mismatches. ``strict=False`` ignores entries of the file that ``obj`` does not have (and
    params of ``obj`` missing from the file keep their values)."""
    arrays, meta = read(path)
    params = named_params(obj)
    problems = []
    for name, p in params.items():
        if name not in arrays:
            if strict:
                problems.append(f"missing from the file: {name} ({p.dtype.name}{list(p.shape)})")
            continue
        a = arrays[name]
        if a.shape != tuple(p.shape):
            problems.append(f"{name}: shape {list(a.shape)} in the file, {list(p.shape)} here")
        if a.dtype != p.dtype:
            problems.append(f"{name}: dtype {a.dtype.name} in the file, {p.dtype.name} here")
    if strict:
        problems += [f"not in what is loaded: {name} ({a.dtype.name}{list(a.shape)})" for name, a in arrays.items()
                     if name not in params]
    if problems:
        raise GraphcError(f"checkpoint {path} does not match ({len(problems)} problems; nothing was loaded):\n  "
                          + "\n  ".join(problems))
    for name, p in params.items():
        if name in arrays:
            p.value = arrays[name]
    return meta


__all__ = ["save", "load", "read", "named_params"]
