"""Registry of framework adapters. Importing this package imports no framework.

`available()` checks with `importlib.util.find_spec`; `get(name)` imports the adapter's module, whose class
imports its framework when it is created.
"""
from __future__ import annotations

import importlib
import importlib.util
from functools import cache

from adapters.base import Adapter

# name -> (module, class, the framework's import name, what to install)
_REGISTRY = {
    "numpy": ("adapters.numpy_ref", "NumpyAdapter", "numpy", "numpy"),
    "torch": ("adapters.torch_backend", "TorchAdapter", "torch", "pip install 'varlen[torch]'"),
    "tensorflow": ("adapters.tensorflow_backend", "TensorflowAdapter", "tensorflow",
                   "pip install 'varlen[tensorflow]'"),
    "jax": ("adapters.jax_backend", "JaxAdapter", "jax", "pip install 'varlen[jax]'"),
}

KNOWN = tuple(sorted(_REGISTRY))


class FrameworkUnavailable(ImportError):
    """The adapter's framework is not installed here."""


def available() -> list[str]:
    """Names of the adapters whose framework is importable, sorted. Imports no framework."""
    return sorted(n for n, (_, _, fw, _) in _REGISTRY.items() if importlib.util.find_spec(fw) is not None)


@cache
def get(name: str) -> Adapter:
    """The adapter called `name` (one instance per process)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown adapter {name!r}; known adapters: {list(KNOWN)}")
    module, cls, fw, install = _REGISTRY[name]
    if importlib.util.find_spec(fw) is None:
        raise FrameworkUnavailable(f"the {name} adapter needs {fw}, which is not installed here: {install}")
    return getattr(importlib.import_module(module), cls)()


def declared_strategies(name: str) -> list[str]:
    """The RNN strategies adapter `name` declares (class attribute; imports the adapter module, not the framework)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown adapter {name!r}; known adapters: {list(KNOWN)}")
    module, cls, _, _ = _REGISTRY[name]
    return list(getattr(importlib.import_module(module), cls).strategies)


__all__ = ["declared_strategies", "Adapter", "FrameworkUnavailable", "KNOWN", "available", "get"]
