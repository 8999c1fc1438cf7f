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
    """A check record's fields (`harness.records` adds run id, machine and time when it is written).

    Recipe ("idiom") and native records also carry `why` (what the recipe does and why it goes wrong, whole
    sentences), `fix` (what to use instead, e.g. varlen's exact strategy) and, for a quantity recorded only as
    information, `judged=False`: such a record says what the framework leaves where the user never reads (e.g.
    attention's padded query rows) with `equivalent=True` (the recipe is not wrong for it) and its size in
    `max_abs_err`; verdicts (`harness.report.tables.verdict_matrix`) show it apart and never count it as wrong."""
    return {"source": "check", "framework": fw.name, "version": fw.version, "device": device, "kernel": "",
            **fw.device_fields(device), **fields}


def exact(a, b) -> dict:
    """Bit-exact comparison (NaN equal to NaN) as check-record fields."""
    import numpy as np

    ok = a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    return {"equivalent": bool(ok), "max_abs_err": 0.0 if ok else float("inf")}


def doc_why(fn) -> str:
    """The explanatory text of a native behaviour's docstring: its whole first paragraph, whitespace-normalised
    (never cut mid-sentence: the reason a verdict is what it is often sits in its last clause)."""
    doc = (getattr(fn, "__doc__", None) or "").strip()
    return " ".join(doc.split("\n\n", 1)[0].split())


def error_text(e: BaseException) -> str:
    """How a recipe's or native's exception is recorded: "<ErrorType>: <message>" (the report shows the type and
    the message's first line: "raises <ErrorType>: <first line>")."""
    return f"{type(e).__name__}: {e}"[:300]


def checked(strategies, only) -> list[str]:
    """The strategies a check covers for one case: `strategies` (the adapter's for it) limited to `only` (`varlen
    check --strategy`; None: every one)."""
    return [s for s in strategies if only is None or s in only]


def use_strategy(fw, family: str, **spec) -> str:
    """A record's `fix` when the remedy is varlen's exact strategy: the framework's default one for `spec`."""
    return f"varlen's exact strategy {fw.strategies(family, **spec)[0]!r}"
