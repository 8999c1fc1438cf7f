"""The family registry: what `check`, `bench`, the CLI and the report loop over (see `families/base.py`).

Adding an op family = one module here + its line in FAMILIES; nothing else in the harness changes.
"""
from __future__ import annotations

from types import ModuleType

from harness.families import attention, embedding, epoch, loss, ops, rnn

FAMILIES: dict[str, ModuleType] = {m.NAME: m for m in (ops, rnn, loss, embedding, attention, epoch)}
#: every bench op, in report order, and its title
OP_TITLES: dict[str, str] = {op: title for m in FAMILIES.values() for op, title in m.OPS.items()}
OPS: tuple[str, ...] = tuple(OP_TITLES)


def family_of(op: str) -> ModuleType:
    """The family module that owns bench op `op`."""
    for m in FAMILIES.values():
        if op in m.OPS:
            return m
    raise ValueError(f"unknown op {op!r}; expected one of {list(OPS)}")


def strategy_ops() -> tuple[str, ...]:
    """Bench ops whose cases carry a strategy of an adapters strategy family."""
    return tuple(op for m in FAMILIES.values() if m.STRATEGY_FAMILY for op in m.OPS)


def check_family(op: str) -> str | None:
    """The family whose check records carry `op` (a family's CHECK_OPS, by default its own name)."""
    for m in FAMILIES.values():
        if op in getattr(m, "CHECK_OPS", (m.NAME,)):
            return m.NAME
    return None


def recommended_ops() -> tuple[str, ...]:
    """Bench ops of strategy families that the per-batch recommendation ranks (the epoch family has its own)."""
    return tuple(op for m in FAMILIES.values() if m.STRATEGY_FAMILY and getattr(m, "RECOMMEND", True)
                 for op in m.OPS)
