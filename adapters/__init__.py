"""Registry of framework adapters. Importing this package imports no framework.

One package per framework, `adapters/<name>/`, holding one module per op family (`ops.py` for pad/mask/pack/
unpack/masked_mean, `rnn.py`, ...); its `__init__` assembles the adapter class from them. `available()` checks
with `importlib.util.find_spec`; `get(name)` imports the adapter's package, whose class imports its framework when
it is created; `declared_strategies(name, family)` reads a family module's `STRATEGIES` table, which never
imports the framework either.
"""
from __future__ import annotations

import importlib
import importlib.util
from functools import cache

from adapters.base import Adapter

# name -> (adapter class in adapters.<name>, the framework's import name, what to install)
_REGISTRY = {
    "numpy": ("NumpyAdapter", "numpy", "numpy"),
    "torch": ("TorchAdapter", "torch", "pip install 'varlen[torch]'"),
    "tensorflow": ("TensorflowAdapter", "tensorflow", "pip install 'varlen[tensorflow]'"),
    "jax": ("JaxAdapter", "jax", "pip install 'varlen[jax]'"),
}

KNOWN = tuple(sorted(_REGISTRY))
#: the op families that have strategies (each framework package has one module per family)
STRATEGY_FAMILIES = ("rnn", "loss", "attention", "embedding")


class FrameworkUnavailable(ImportError):
    """The adapter's framework is not installed here."""


def _check_known(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown adapter {name!r}; known adapters: {list(KNOWN)}")


def available() -> list[str]:
    """Names of the adapters whose framework is importable, sorted. Imports no framework."""
    return sorted(n for n, (_, fw, _) in _REGISTRY.items() if importlib.util.find_spec(fw) is not None)


@cache
def get(name: str) -> Adapter:
    """The adapter called `name` (one instance per process)."""
    _check_known(name)
    cls, fw, install = _REGISTRY[name]
    if importlib.util.find_spec(fw) is None:
        raise FrameworkUnavailable(f"the {name} adapter needs {fw}, which is not installed here: {install}")
    return getattr(importlib.import_module(f"adapters.{name}"), cls)()


def peak_resettable(name: str) -> bool:
    """Whether adapter `name` can reset its GPU allocator's peak (a class attribute; imports no framework)."""
    _check_known(name)
    return bool(getattr(importlib.import_module(f"adapters.{name}"), _REGISTRY[name][0]).peak_resettable)


def declared_strategies(name: str, family: str = "rnn") -> list[str]:
    """The strategies adapter `name` declares for `family`, default first (imports the family module, which
    imports no framework)."""
    _check_known(name)
    if family not in STRATEGY_FAMILIES:
        raise ValueError(f"unknown family {family!r}; families with strategies: {list(STRATEGY_FAMILIES)}")
    return list(importlib.import_module(f"adapters.{name}.{family}").STRATEGIES)


__all__ = ["Adapter", "FrameworkUnavailable", "KNOWN", "STRATEGY_FAMILIES", "available", "declared_strategies", "get",
           "peak_resettable"]
