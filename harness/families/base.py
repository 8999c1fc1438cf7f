"""What every op family's harness module shares: the prepared benchmark case and the check record.

A family module (`harness/families/<family>.py`) is a plain module with these names, which `check`, `bench`, the
CLI and the report read through the registry in `harness/families/__init__.py`:

- `NAME`: the family ("ops", "rnn", ...); `STRATEGY_FAMILY`: the adapters' strategy family it benchmarks, or None
  when its ops have no strategies (then a case's strategy is the op's name);
- `OPS`: bench op name -> title, e.g. {"rnn_forward": "RNN forward"};
- `expand(base, grid, strategies) -> list[dict]`: the bench cases of one op at one grid point;
- `check_records(fw, ref, device) -> Iterator[dict]`: the equivalence cells, native behaviours and recipes, as
  check records (`record(...)` below);
- `prepare(adapter, case) -> Prepared`: inputs on the device and the callable every entry point times, with the
  ideal work (bytes or FLOPs on valid tokens) and which floor it is measured against;
- `report_sections(check, bench, out) -> list[Section]`: the family's own report sections (optional; check and
  bench are the report's DataFrames of schema records, out the report folder for figures), and
  `summary_table(check)`: the table `varlen check` prints for the family's recipes/natives (optional).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Prepared:
    """A ready-to-time case: `run()` calls the op once (inputs already on the device); `bench` adds the sync."""

    run: Callable[[], object]
    valid_tokens: int
    padded_tokens: int
    padding_fraction: float
    work: float          # bytes (memory-bound ops) or FLOPs (RNNs) of the ideal implementation, valid tokens only
    floor: str           # "copy" or "gemm"
    ideal_share: float = 1.0  # valid work / padded work (linear ops: valid/padded tokens; attention: sum L^2/BT^2)
    extra: dict = field(default_factory=dict)  # family-specific record fields (e.g. an epoch's policy and shapes)


def record(fw, device: str, **fields) -> dict:
    """A check record's fields (`harness.records` adds run id, machine and time when it is written)."""
    return {"source": "check", "framework": fw.name, "version": fw.version, "device": device, "kernel": "",
            **fields}


def exact(a, b) -> dict:
    """Bit-exact comparison (NaN equal to NaN) as check-record fields."""
    import numpy as np

    ok = a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    return {"equivalent": bool(ok), "max_abs_err": 0.0 if ok else float("inf")}
