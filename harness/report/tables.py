"""Report tables: pandas shaping of schema records only (groupby, pivot); no figures, no HTML."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from harness.bench import PLAN_TAIL
from harness.families import FAMILIES, OP_TITLES, check_family, family_of, recommended_ops, strategy_ops
from harness.records import COMMON_OPTIONAL, COMMON_REQUIRED, SOURCES
from harness.report.render import fmt
from harness.speedups import SHAPE, baseline, compiled_shapes, contenders, planned_shapes, runoff


def frame(records: list[dict], source: str) -> pd.DataFrame:
    """The records of one source as a DataFrame with every schema column (absent ones as missing values), so
    no section has to guess whether a column exists."""
    required, optional = SOURCES[source]
    cols = list(dict.fromkeys([*COMMON_REQUIRED, *COMMON_OPTIONAL, *required, *optional]))
    df = pd.DataFrame([r for r in records if r.get("source") == source])
    return df.reindex(columns=list(dict.fromkeys([*cols, *df.columns])))


def check_frame(records: list[dict]) -> pd.DataFrame:
    """The check records (`frame`) with their "cut" column (`incomplete`) computed once, for every table that
    asks; legacy information-only records (`legacy_info`) read as the current writers record that quantity:
    `judged` False and `equivalent` True (what it holds stays in `max_abs_err` and `detail`), so no table that
    reads `equivalent` alone (a family's own section) shows them as failures."""
    check = frame(records, "check")
    legacy = legacy_info(check)
    if legacy.any():
        check = check.astype({"judged": object, "equivalent": object})
        check.loc[legacy, "judged"] = False
        check.loc[legacy, "equivalent"] = True
    return check.assign(cut=_incomplete(check))


def legacy_info(check: pd.DataFrame) -> pd.Series:
    """Per check record, True for an information-only quantity written before records carried `judged` (a
    family's LEGACY_INFO_QUANTITIES, e.g. attention's "outputs_padded", now "padded_rows"): no `judged` field, and
    `equivalent` False wherever padded rows held anything but 0."""
    pairs = {(op, q) for m in FAMILIES.values() for op in getattr(m, "CHECK_OPS", (m.NAME,))
             for q in getattr(m, "LEGACY_INFO_QUANTITIES", ())}
    if check.empty or not pairs:
        return pd.Series(False, index=check.index, dtype=bool)
    named = pd.Series([(o, q) in pairs for o, q in zip(frame_col(check, "op"), frame_col(check, "quantity"),
                                                          strict=True)], index=check.index, dtype=bool)
    return named & frame_col(check, "judged").isna()


def bench_frame(records: list[dict]) -> pd.DataFrame:
    """The bench records; a measured one without a kernel (older or hand-written files) reads kernel "?", so no
    label built from it turns into NaN."""
    df = frame(records, "bench")
    df["impl"] = df["framework"].astype(str) + ":" + df["strategy"].astype(str)
    df["kernel"] = df["kernel"].astype(object).where(df["kernel"].notna() | (df["status"] != "ok"), "?")
    return df


def ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def headline(df: pd.DataFrame) -> pd.DataFrame:
    """The quick grid's common point: the most frequent (batch, max_len) pair per op and device (the smallest of
    equally frequent ones). Per device: a GPU run of one shape keeps its point beside CPU sweeps over others."""
    if df.empty:
        return df
    parts = []
    for _, g in df.groupby(["op", "device"], sort=False):
        sizes = g.groupby(["batch", "max_len"]).size()
        B, T = sizes.idxmax()
        parts.append(g[(g["batch"] == B) & (g["max_len"] == T)])
    return pd.concat(parts)


def shape_label(batch, max_len) -> str:
    """How the report names a benchmark point: "B=64 T=128"."""
    return f"B={batch:g} T={max_len:g}"


def kernel_names(kernels) -> str:
    """The kernel(s) a group of records ran, for a label: the one name where all agree, else the distinct names
    with their plan sizes generalised ("bucketed[4]x cudnn", "bucketed[3]x cudnn" -> "bucketed[k]x cudnn";
    "rows[20x128]" -> "rows[k]"), joined by " / "."""
    names = sorted({str(k) for k in kernels if isinstance(k, str) and k})
    if len(names) > 1:
        names = sorted({re.sub(r"\[[0-9x]+\]", "[k]", k) for k in names})
    return " / ".join(names) if names else "?"


def labelled(df: pd.DataFrame, by: list[str]) -> pd.Series:
    """Each row's "framework:strategy [kernels]", the kernels being `kernel_names` of its group `by` (e.g. the
    rows of one strategy on one device): a figure's legend names what ran."""
    kernels = df.groupby(by, dropna=False)["kernel"].transform(kernel_names)
    return df["impl"] + " [" + kernels + "]"


def with_shape(df: pd.DataFrame) -> pd.DataFrame:
    """df with a "shape" column, `shape_label` of each row's batch and max_len."""
    return df.assign(shape=[shape_label(b, t) for b, t in zip(df["batch"], df["max_len"], strict=True)])


def equivalence_table(check: pd.DataFrame) -> pd.DataFrame:
    """device x framework x family x kind x name x dtype: cells checked, cells failed, worst error, whether the
    family's check ran to its end ("complete": no cell `incomplete`) and so whether the row proves anything
    ("proven_exact": complete and no cell failed)."""
    check = check.assign(cut=incomplete(check))
    df = check[check["kind"].isin(["op", "strategy", "error"])].copy()
    df["dtype"] = df["dtype"].fillna("")
    df["kernel"] = df["kernel"].fillna("")
    df["device"] = df["device"].fillna("cpu")
    df["family"] = df["op"].map(lambda op: check_family(op) or op)
    g = df.groupby(["device", "framework", "family", "kind", "name", "dtype"], sort=True)
    out = g.agg(cells=("equivalent", "size"), failed=("equivalent", lambda s: int((~s.astype(bool)).sum())),
                max_abs_err=("max_abs_err", "max"),
                kernel=("kernel", lambda s: ", ".join(sorted({k for k in s if k}))),
                complete=("cut", lambda s: not s.any())).reset_index()
    out["all_equivalent"] = out["failed"] == 0
    out["proven_exact"] = out["all_equivalent"] & out["complete"]
    return out


def failures_table(check: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in ("device", "framework", "kind", "name", "case", "cell", "side", "bidirectional", "dtype",
                        "quantity",
                        "max_abs_err", "kernel", "error") if c in check.columns]
    bad = check[check["kind"].isin(["op", "strategy", "error"]) & ~check["equivalent"].astype(bool)]
    return bad[cols]


def incomplete(check: pd.DataFrame) -> pd.Series:
    """`_incomplete`, read from the "cut" column where `check_frame` computed it (a slice of that frame keeps it:
    the markers it was computed from are all in the frame it came from)."""
    return check["cut"].astype(bool) if "cut" in check.columns else _incomplete(check)


def _incomplete(check: pd.DataFrame) -> pd.Series:
    """Per check record, True for a cell (op, strategy, recipe, native behaviour) whose run's worker recorded
    that it started on that framework and device but no "done" for the cell's family: it was cut off (Ctrl-C, a
    kill, a timeout, a crash) inside the family, so the cells it left are not the whole family's and none of them
    proves it exact. Records of runs without markers (before workers wrote them) are judged by the cells they hold."""
    if check.empty:
        return pd.Series(False, index=check.index, dtype=bool)
    dev, kind, fw, run = check["device"].fillna("cpu"), check["kind"], check["framework"], check["run_id"]
    fam = check["op"].map(lambda op: check_family(op) or op)
    on = kind == "started"
    started = set(zip(run[on], fw[on], dev[on], strict=True))
    on = kind == "done"
    done = set(zip(run[on], fw[on], check["op"][on], dev[on], strict=True))
    cell = kind.isin(["op", "strategy", "idiom", "native"])
    return pd.Series([bool(c) and (r, f, d) in started and (r, f, m, d) not in done
                      for c, r, f, m, d in zip(cell, run, fw, fam, dev, strict=True)], index=check.index, dtype=bool)


def cut_off(check: pd.DataFrame) -> list[str]:
    """"framework/family on device" of each family some cell of which is `incomplete`, sorted."""
    bad = check[incomplete(check)]
    return sorted({f"{f}/{check_family(op) or op} on {d}"
                   for f, op, d in zip(bad["framework"], bad["op"], bad["device"].fillna("cpu"), strict=True)})


def strategy_status(check: pd.DataFrame) -> dict[tuple[str, str, str, str], str]:
    """(framework, family, strategy, device) -> "exact" (every equivalence cell checked on that device passed),
    "WRONG" (a cell failed there) or "incomplete" (no cell failed, but a cell's check worker was cut off before
    the family was done: `incomplete`); a strategy of one family is judged by that family's cells only (TF's
    "keras" RNN and loss differ), and on one device by that device's cells only (a strategy checked on the CPU is
    unchecked on a GPU)."""
    st = check[check["kind"] == "strategy"]
    if st.empty:
        return {}
    st = st.assign(family=st["op"].map(check_family), device=st["device"].fillna("cpu"), cut=incomplete(check)[
        check["kind"] == "strategy"])
    g = st.groupby(["framework", "family", "name", "device"])
    allok, cut = g["equivalent"].all(), g["cut"].any()
    return {k: "WRONG" if not v else "incomplete" if cut[k] else "exact" for k, v in allok.items()}


def bench_status(df: pd.DataFrame, check: pd.DataFrame) -> list[str]:
    """The verdict of each bench record's (framework, family, strategy) on its device: exact, WRONG or
    unchecked."""
    status = strategy_status(check)
    fams = df["op"].map(lambda op: family_of(op).NAME)
    return [status.get((f, fam, s, d), "unchecked")
            for f, fam, s, d in zip(df["framework"], fams, df["strategy"], df["device"])]


#: what, beside op, device, B and T (and the framework, a column of its own), two bench records must share to be
#: compared: the machine they ran on and the rest of `harness.speedups.SHAPE` (dtype and the model's configuration);
#: missing values (a loss has no cell) match
CONFIG = ("host", *(f for f in SHAPE if f not in ("op", "device", "batch", "max_len", "framework")))


def _key(r: pd.Series, fields) -> tuple:
    """r's `fields`, missing values (None or NaN) as None, so that keys of two records compare equal."""
    return tuple(None if pd.isna(v) else v for v in (r.get(f) for f in fields))


def varying_config(df: pd.DataFrame) -> list[str]:
    """The `CONFIG` fields with more than one value within some op of df: the columns a table needs to tell its rows
    apart (an RNN's cell beside a loss's missing one is no variation)."""
    return [c for c in CONFIG if c in df.columns and not df.empty and (df.groupby("op")[c].nunique() > 1).any()]


def config_text(df: pd.DataFrame, cols: list[str]) -> pd.Series:
    """Each row's values of configuration columns `cols` as " (cell gru, hidden 256)" for a label; missing values
    (a loss has no cell) left out, "" where nothing is left."""
    def one(r) -> str:
        parts = [f"{c} {r[c]:g}" if isinstance(r[c], float) else f"{c} {r[c]}" for c in cols if not pd.isna(r[c])]
        return f" ({', '.join(parts)})" if parts else ""

    return pd.Series([one(r) for _, r in df[cols].iterrows()] if cols else "", index=df.index, dtype=object)


def status_mark(df: pd.DataFrame, check: pd.DataFrame | None, strategy: str = "strategy") -> pd.Series:
    """" (unchecked)", " (incomplete)" or " (WRONG)" after each row (bench or paired) of a strategy op whose strategy
    (column `strategy`: "base_strategy" for a paired record's baseline) is not proven exact on the row's device
    (`bench_status`); "" for an exact one and for ops without strategies (their cells are checked as ops)."""
    if df.empty:
        return pd.Series("", index=df.index, dtype=object)
    check = check if check is not None else pd.DataFrame(columns=["kind"])
    verdict = pd.Series(bench_status(df.assign(strategy=df[strategy]), check), index=df.index)
    marked = df["op"].isin(strategy_ops()) & (verdict != "exact")
    return verdict.where(marked, "").map(lambda v: f" ({v})" if v else "")


def side_by_side(paired: pd.DataFrame | None, field: str = "ratio") -> dict[tuple, float]:
    """(framework, op, device, batch, max_len, *CONFIG, profile, strategy, baseline strategy) -> the latest ratio of
    that pair timed side by side (`harness.paired`; `field` "ratio_p25": the 25th percentile of its rounds)."""
    if paired is None or paired.empty:
        return {}
    keys = ["framework", "op", "device", "batch", "max_len", *CONFIG, "profile", "strategy", "base_strategy"]
    latest = paired.sort_values("time").drop_duplicates(keys, keep="last")
    return {_key(r, keys): float(r[field]) for _, r in latest.iterrows()}


def _group(r: pd.Series, op: str, device: str) -> tuple:
    """The leading fields of a `side_by_side` key that bench row `r`'s pairs share: framework, op, device, B, T
    and configuration."""
    return (r["framework"], op, device, *_key(r, ["batch", "max_len", *CONFIG]))


def pair_ratio(side: dict[tuple, float], r: pd.Series, op: str, device: str, profile: str, base: str) -> float:
    """The side-by-side ratio (baseline over strategy) of bench row `r`'s strategy against strategy `base` on
    `profile` at r's framework, B, T and configuration (`side_by_side`), missing where that pair was not timed."""
    return side.get((*_group(r, op, device), profile, r["strategy"], base), float("nan"))


def baselines(equal: pd.DataFrame, side: dict[tuple, float], low: dict[tuple, float], op: str,
              device: str) -> tuple[dict, dict]:
    """Per framework of `equal` (one op, device, B, T and configuration's equal-length rows): its sweep's fastest
    row, and its padded baseline's (`harness.speedups.baseline`: a strategy timed side by side against the sweep's
    fastest there and faster than it takes its place), as `varlen bench` decides them; `side` and `low`:
    `side_by_side` of the ratios and of their 25th percentiles. Only a strategy that pairs were timed against can
    take the sweep's fastest's place: records from before 2026-12-05 hold one round, the profiles timed against the
    sweep's fastest, whose figures a baseline they were never timed against would leave without a pair."""
    against = {(k[:-3], k[-1]) for k in side}
    firsts, bases = {}, {}
    for fw, e in equal.groupby("framework"):
        rows = [r for _, r in e.iterrows()]
        firsts[fw] = first = min(rows, key=lambda r: r["median_s"])
        was_base = lambda r: (_group(r, op, device), r["strategy"]) in against  # noqa: E731
        bases[fw] = baseline(rows, lambda r: r["median_s"], lambda r: r["strategy"],
                             lambda r: pair_ratio(side, r, op, device, "equal", first["strategy"]),
                             lambda r: pair_ratio(low, r, op, device, "equal", first["strategy"]) if was_base(r)
                             else None)
    return firsts, bases


def equal_cost(side: dict[tuple, float], r: pd.Series, op: str, device: str, base_strategy) -> float:
    """What strategy `r` costs on equal lengths (same framework, op, device, B, T): its time over the padded
    baseline's there, timed side by side; exactly 1 where it is the baseline's strategy, missing where that pair
    was not timed."""
    base = base_strategy.get(r["framework"])
    if r["strategy"] == base:
        return 1.0
    return round(1 / pair_ratio(side, r, op, device, "equal", base), 2)


def default_strategy(framework: str, op: str) -> str | None:
    """The strategy `framework` runs for `op` when none is named (its first declared), None where unknown."""
    import adapters

    try:
        return adapters.declared_strategies(framework, family_of(op).STRATEGY_FAMILY)[0]
    except (ValueError, KeyError, ImportError, IndexError):
        return None


def recommendation_table(df: pd.DataFrame, check: pd.DataFrame, paired: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per op x device x profile (headline B, T): the fastest exact strategy per framework and overall, against
    the padded baseline and the ideal.

    Padded baseline = the same framework's fastest exact strategy on the fully padded batch (profile `equal`,
    same B and T): the cost of ignoring the lengths; the sweep's fastest there, unless a strategy timed side by
    side against it there was faster (`baselines`; columns "padded baseline" and "sweep's fastest padded"). "x vs
    padded baseline" divides the sweep's fastest time on equal lengths by the row's sweep time; on equal lengths the
    row is the baseline itself.
    Ideal = that time x the valid share of the work (`ideal_share`: valid / padded tokens, or sum L^2 / B T^2 for
    attention). Only strategies that passed every
    equivalence cell count as exact; a framework without check records is "unchecked" and never recommended.
    `paired` (the `paired` records' frame): where the same strategy and baseline were also timed side by side, that
    ratio is the "x side by side" column (else missing), and the strategy's time over the baseline's on equal
    lengths, timed side by side, is "cost on equal lengths" (`equal_cost`); where strategies whose sweep times the
    drift cannot order were all timed side by side, the highest ratio is the framework's fastest (`runoff`, as
    `varlen bench` prints it). "x vs default" = the time of the
    framework's default strategy (what runs when none is named: torch `packed`, Keras's layer, JAX `scan`) on the
    same profile over this time, where that strategy was measured and is exact.
    Records are compared only within one host and model configuration (`CONFIG`: dtype, cell, hidden size, ...);
    where the data holds several, the table has a column for each field that varies. A timing that saw a retrace
    (`retraced`: it timed compiles) is not a warm time and is left out.
    """
    side, low = side_by_side(paired), side_by_side(paired, "ratio_p25")
    data = headline(ok(df)[ok(df)["op"].isin(recommended_ops())])
    if data.empty:
        return pd.DataFrame()
    data = data.assign(verdict=bench_status(data, check))
    exact = data[(data["verdict"] == "exact") & ~data["retraced"].eq(True)]
    varying, rows = varying_config(exact), []
    for (op, device, batch, max_len, *_), d in exact.groupby(["op", "device", "batch", "max_len", *CONFIG],
                                                            dropna=False):
        firsts, bases = baselines(d[d["profile"] == "equal"], side, low, op, device)
        base = {fw: r["median_s"] for fw, r in firsts.items()}
        base_strategy = {fw: r["strategy"] for fw, r in bases.items()}
        for profile, g in d.groupby("profile"):
            fastest = pd.DataFrame([bases[fw] if profile == "equal" else
                                    runoff([r for _, r in h.iterrows()], lambda r: r["median_s"],
                                           lambda r: r["strategy"],
                                           lambda r, fw=fw: pair_ratio(side, r, op, device, profile,
                                                                       base_strategy.get(fw)))
                                    for fw, h in g.groupby("framework")])
            winner = fastest.loc[fastest["median_s"].idxmin()]
            for _, r in fastest.iterrows():
                b = base.get(r["framework"], float("nan"))
                default = g[(g["framework"] == r["framework"])
                            & (g["strategy"] == default_strategy(r["framework"], op))]["median_s"]
                rows.append({"op": OP_TITLES.get(op, op), "device": device, "shape": shape_label(batch, max_len),
                             **{c: r[c] for c in varying},
                             "profile": profile, "padding": round(float(r["padding_fraction"]), 2),
                             "framework": r["framework"],
                             "fastest exact strategy": r["strategy"], "kernel": r["kernel"],
                             "padded baseline": base_strategy.get(r["framework"], ""),
                             "sweep's fastest padded": firsts[r["framework"]]["strategy"]
                             if r["framework"] in firsts else "",
                             "valid Mtok/s": round(r["valid_tokens_per_s"] / 1e6, 3),
                             "x vs padded baseline": round(b / r["median_s"], 2),
                             "x side by side": round(pair_ratio(side, r, op, device, profile,
                                                                base_strategy.get(r["framework"])), 2),
                             "x vs default": round(default.min() / r["median_s"], 2) if len(default) else
                             float("nan"),
                             "ideal x": round(1 / r["ideal_share"], 2) if r["ideal_share"] else float("nan"),
                             "fraction of ideal": round(ideal_fraction(
                                 b / r["median_s"], pair_ratio(side, r, op, device, profile,
                                                               base_strategy.get(r["framework"])),
                                 r["ideal_share"]), 2),
                             "cost on equal lengths": equal_cost(side, r, op, device, base_strategy),
                             "new batches compiled": fresh_compiles(r),
                             "overall best": r["framework"] == winner["framework"]})
    why = {"unchecked": "unchecked on this device (no check records)",
           "incomplete": "check cut off on this device before their family was done"}
    unchecked = data[data["verdict"].isin(list(why))].groupby(["framework", "device", "verdict"])["strategy"]
    for (fw, device, verdict), names in unchecked:
        rows.append({"op": "-", "device": device, "shape": "-", "profile": "-", "padding": float("nan"),
                     "framework": fw,
                     "fastest exact strategy": f"{why[verdict]}, never recommended: {', '.join(sorted(set(names)))}",
                     "kernel": "", "padded baseline": "", "sweep's fastest padded": "", "valid Mtok/s": float("nan"),
                     "x vs padded baseline": float("nan"),
                     "x side by side": float("nan"), "x vs default": float("nan"), "ideal x": float("nan"),
                     "fraction of ideal": float("nan"), "cost on equal lengths": float("nan"),
                     "new batches compiled": "", "overall best": False})
    return pd.DataFrame(rows)


def ideal_fraction(sweep_x: float, side_x: float, share: float) -> float:
    """A strategy's fraction of the ideal: the ideal time (padded baseline time x ideal share) over its time, i.e.
    its speedup over the padded baseline x the share; the speedup timed side by side (`side_x`) where the pair
    was, else the sweep's (`sweep_x`). Missing where either part is."""
    x = side_x if pd.notna(side_x) else sweep_x
    return float(x) * float(share) if pd.notna(x) and pd.notna(share) else float("nan")


def strategy_table(df: pd.DataFrame, check: pd.DataFrame, paired: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every strategy of every case (op x device x headline B, T x configuration x profile), exact or not (marked,
    `status_mark`): its time, its speedup over its framework's padded baseline (`baselines`, decided among the
    exact strategies as the recommendation decides it) timed side by side where that pair was, else the sweep's,
    and its fraction of the ideal (`ideal_fraction`, from the same speedup). Retraced timings (not warm) are left
    out; a framework without an exact strategy on equal lengths there has no baseline: its figures are missing."""
    side, low = side_by_side(paired), side_by_side(paired, "ratio_p25")
    data = headline(ok(df)[ok(df)["op"].isin(recommended_ops())])
    if data.empty:
        return pd.DataFrame()
    data = data[~data["retraced"].eq(True)]
    data = data.assign(verdict=bench_status(data, check), mark=status_mark(data, check))
    varying, rows = varying_config(data), []
    for (op, device, batch, max_len, *_), d in data.groupby(["op", "device", "batch", "max_len", *CONFIG],
                                                            dropna=False):
        equal = d[(d["profile"] == "equal") & (d["verdict"] == "exact")]
        firsts, bases = baselines(equal, side, low, op, device)
        for _, r in d.sort_values(["profile", "framework", "median_s"]).iterrows():
            fw, base = r["framework"], bases.get(r["framework"])
            sweep_x = firsts[fw]["median_s"] / r["median_s"] if fw in firsts else float("nan")
            side_x = pair_ratio(side, r, op, device, r["profile"], base["strategy"]) if base is not None else np.nan
            itself = base is not None and r["profile"] == "equal" and r["strategy"] == base["strategy"]
            side_x = 1.0 if itself else side_x
            share = r["ideal_share"]
            rows.append({"op": OP_TITLES.get(op, op), "device": device, "shape": shape_label(batch, max_len),
                         **{c: "-" if pd.isna(r[c]) else r[c] for c in varying}, "profile": r["profile"],
                         "padding": round(float(r["padding_fraction"]), 2), "framework": fw,
                         "strategy [kernel]": f"{r['strategy']} [{r['kernel']}]{r['mark']}",
                         "ms": round(r["median_s"] * 1e3, 3), "padded baseline": base["strategy"] if base is not None
                         else "-", "x vs padded baseline": round(side_x if pd.notna(side_x) else sweep_x, 2),
                         "timed": "-" if base is None else "(the baseline)" if itself else "side by side"
                         if pd.notna(side_x) else "sweep",
                         "ideal x": round(1 / share, 2) if pd.notna(share) and share else float("nan"),
                         "fraction of ideal": round(ideal_fraction(sweep_x, side_x, share), 3)})
    return pd.DataFrame(rows)


def fresh_compiles(r) -> str:
    """"<n> shapes over <k>": what fresh batches of the profile compiled after the case (`stream_compiles`), or ""
    where none were measured or they compiled nothing."""
    n, k = r.get("stream_compiles"), r.get("stream_batches")
    return "" if pd.isna(n) or pd.isna(k) or n <= 0 else compiled_shapes(n, k) + planned_shapes(r)


def setup_floor_rows(records: list[dict]) -> pd.DataFrame:
    fl = frame(records, "floors")
    if fl.empty:
        return fl
    fl["copy GB/s"] = (fl["copy_bytes_per_s"] / 1e9).round(2)
    fl["GEMM GFLOP/s (float32)"] = (fl["gemm_flop_per_s"] / 1e9).round(1)
    fl["date"] = pd.to_datetime(fl["time"], unit="s").dt.strftime("%Y-%m-%d %H:%M UTC")
    fl["measured with"] = measured_with(fl)
    return fl[["host", "device", "measured with", "date", "copy GB/s", "GEMM GFLOP/s (float32)"]]


#: a bench record's floor kind -> the rate it is measured against
FLOOR_RATES = {"copy": "copy_bytes_per_s", "gemm": "gemm_flop_per_s"}
#: what names a machine and its device in the records (host names alone repeat: every VM here is "vm"; two VMs
#: "vm" with different GPUs differ in `device_name`, which older records lack)
MACHINE = ["host", "cpu", "cores", "device", "device_name"]


def machine_floors(records: list[dict]) -> pd.DataFrame:
    """Per machine and device (`MACHINE`): the best copy bandwidth and float32 GEMM rate any worker measured there
    with its own framework (NumPy for `harness.floors`), and who measured each ("<kind>_by"): the machine's floors.
    One framework's primitive can fall far short of the machine (torch's GEMM on an AMD CPU, a copy that pays
    page faults), and a fraction of that framework's own floor then reads above 1 for no kernel's merit."""
    fl = frame(records, "floors")
    cols = [*MACHINE, *FLOOR_RATES.values(), *(f"{k}_by" for k in FLOOR_RATES)]
    fl = fl.dropna(subset=list(FLOOR_RATES.values()), how="all")
    if fl.empty:
        return pd.DataFrame(columns=cols)
    fl["by"] = measured_with(fl)
    rows = []
    for _, g in fl.groupby(machine_keys(fl)):
        row = {c: frame_col(g, c).iloc[0] for c in MACHINE}
        for kind, col in FLOOR_RATES.items():
            rates = g[col].dropna()
            row[col] = rates.max() if not rates.empty else np.nan
            row[f"{kind}_by"] = g.loc[rates.idxmax(), "by"] if not rates.empty else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def measured_with(fl: pd.DataFrame) -> pd.Series:
    """Who measured each floors record: its framework, or NumPy (`harness.floors`) where it names none."""
    return fl["framework"].astype(object).where(fl["framework"].notna(), "numpy")


def machine_keys(df: pd.DataFrame) -> pd.Series:
    """Each row's machine and device (`MACHINE`) as one hashable key, the same for 2 and 2.0 cores or a missing
    value on either side."""
    cores = pd.to_numeric(frame_col(df, "cores"), errors="coerce")
    parts = [frame_col(df, c).astype(object).where(frame_col(df, c).notna(), "")
             for c in ("host", "cpu", "device", "device_name")]
    return pd.Series(list(zip(parts[0], parts[1], cores.fillna(-1).astype(int), parts[2], parts[3])),
                     index=df.index, dtype=object)


def device_names(df: pd.DataFrame) -> str:
    """The distinct `device_name`s of df's records ("NVIDIA H100 80GB HBM3"), joined by " / "; "" where none
    carries one (records older than the field)."""
    return " / ".join(sorted({str(v) for v in frame_col(df, "device_name").dropna() if str(v)}))


def frame_col(df: pd.DataFrame, col: str) -> pd.Series:
    """df[col], or a column of missing values where df has none."""
    return df[col] if col in df.columns else pd.Series(np.nan, index=df.index)


def machine_fraction(df: pd.DataFrame, floors: pd.DataFrame) -> pd.Series:
    """Each bench row's fraction of its machine's floor: work / the machine's rate for its floor kind (the best of
    `machine_floors` and the rate the row's own worker measured) / its median time. A row without `work` or any
    rate (older records) keeps the fraction its worker stored, if any."""
    at_machine = machine_keys(df)
    number = lambda col: pd.to_numeric(frame_col(df, col), errors="coerce")  # noqa: E731
    rate = pd.Series(np.nan, index=df.index)
    for kind, col in FLOOR_RATES.items():
        best = at_machine.map(dict(zip(machine_keys(floors), floors[col]))).astype(float)
        rate = rate.where(df["floor"] != kind, np.fmax(best, number(f"floor_{col}")))
    work = number("work")
    return (work / rate / number("median_s")).where(work.notna() & rate.notna(), number("fraction_of_floor"))


__all__ = ["FLOOR_RATES", "MACHINE", "bench_frame", "equivalence_table", "failures_table", "fmt", "frame",
           "headline", "machine_floors", "machine_fraction", "ok", "recommendation_table", "setup_floor_rows",
           "strategy_status"]


CALLS = (1, 100, 10_000)


def warm_times(data: pd.DataFrame, paired: pd.DataFrame | None) -> pd.Series:
    """Each row's warm seconds a call for ranking strategies: its sweep median, except where the sweep could not
    order a framework's strategies on a profile and they were timed side by side (`runoff`'s contenders, the
    sweep's fastest among them), and on equal lengths wherever a strategy was timed against the padded baseline:
    there the baseline's time over the side-by-side ratio, so that those strategies rank as the recommendation ranks
    them, on the sweep's scale (the baseline's time on it: the sweep's fastest time on equal lengths over the
    baseline's side-by-side ratio to it, where `baselines` put another strategy in its place)."""
    side, low, out = side_by_side(paired), side_by_side(paired, "ratio_p25"), data["median_s"].astype(float).copy()
    if not side:
        return out
    for (op, device, *_), d in data.groupby(["op", "device", "batch", "max_len", *CONFIG], dropna=False):
        firsts, bases = baselines(d[d["profile"] == "equal"], side, low, op, device)
        for (fw, profile), g in d.groupby(["framework", "profile"]):
            if fw not in bases:
                continue
            first, base = firsts[fw], bases[fw]
            # the baseline's time on the sweep's scale: the sweep's fastest time over the baseline's ratio to it
            base_s = first["median_s"] / (1.0 if base is first else pair_ratio(side, base, op, device, "equal",
                                                                                 first["strategy"]))
            ratio = lambda r, p=profile, b=base["strategy"]: pair_ratio(side, r, op, device, p, b)  # noqa: E731
            if profile == "equal":  # the baseline was decided side by side against each strategy timed here
                ratios = {i: 1.0 if r["strategy"] == base["strategy"] else ratio(r) for i, r in g.iterrows()}
            else:
                ranked = contenders(list(g.iterrows()), lambda ir: ir[1]["median_s"], lambda ir: ir[1]["strategy"])
                timed = len(ranked) > 1 and not math.isnan(ratio(ranked[0][1]))
                ratios = {i: ratio(r) for i, r in ranked} if timed else {}
            for i, x in ratios.items():
                if not math.isnan(x):
                    out[i] = base_s / x
    return out


def compile_aware_table(df: pd.DataFrame, check: pd.DataFrame, paired: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per op x device x configuration x profile (headline B, T): the fastest exact strategy when the cost of n
    calls, each on a new batch of the profile's lengths, is `calls_cost` (compile + the compiles new batches bring
    + n x warm time), for n in CALLS; and the break-evens: the strategy that is cheapest for a single call
    (compiles included), then each strategy that takes its place as the calls grow, with the number of calls from
    which it is the cheapest (`cheapest_from`: every hand-over, not only the one to the fastest warm strategy, so
    the column agrees with the "best for n calls" columns between them).

    A bench record has no compile time (`compile_s` missing) where an earlier case of its worker had compiled the
    shape already (the same strategy on another profile of the same B and T): a fresh process pays that compile, so
    the largest compile time recorded for the same framework, strategy, device, B, T and configuration stands in.
    A strategy with no compile time recorded anywhere is left out (its cost of n calls is unknown), as are retraced
    timings (not a warm time). The compiles of new batches (`stream_compile_s` over `stream_batches` fresh batches,
    `harness.bench.stream_compiles`) count 0 where they were not measured (eager frameworks, equal lengths, records
    older than the measurement); where the strategy's planner also counted the new programs of many more fresh
    batches (`harness.bench.planned_compiles`), those are charged too, at the seconds per program measured
    (`fresh_compile_curve`). `paired`: the warm time of strategies the sweep could not order but a side-by-side
    runoff did is their `warm_times` (so the many-calls columns agree with the recommendation)."""
    data = headline(ok(df)[ok(df)["op"].isin(recommended_ops())])
    if data.empty:
        return pd.DataFrame()
    exact = pd.Series([v == "exact" for v in bench_status(data, check)], index=data.index)
    data = data[exact & ~data["retraced"].eq(True)]
    same = ["framework", "strategy", "op", "device", "batch", "max_len", *CONFIG]
    known = data["compile_s"].astype(float)
    data = data.assign(compile=known.fillna(known.groupby([data[c].astype(str) for c in same]).transform("max")),
                       impl=data["framework"] + ":" + data["strategy"])
    data = data[data["compile"].notna()]
    data = data.assign(**fresh_compile_curve(data))
    data = data.assign(median_s=warm_times(data, paired))
    varying, rows = varying_config(data), []
    for (op, device, *_, profile), g in data.groupby(["op", "device", *CONFIG, "profile"], dropna=False):
        row = {"op": OP_TITLES.get(op, op), "device": device,
               "shape": shape_label(g["batch"].iloc[0], g["max_len"].iloc[0]), **{c: g[c].iloc[0] for c in varying},
               "profile": profile}
        for n in CALLS:
            row[f"best for {n:,} call(s)"] = g.loc[calls_cost(g, n).idxmin(), "impl"]
        row["break-even calls"] = hand_overs(g)
        named = dict.fromkeys([*(row[f"best for {n:,} call(s)"] for n in CALLS), *(i for _, i in cheapest_from(g))])
        row["kernels"] = "; ".join(f"{i} [{kernel_names(g.loc[g['impl'] == i, 'kernel'])}]" for i in named)
        rows.append(row)
    return pd.DataFrame(rows)


#: the knots of `fresh_compile_curve`: (fresh batches, seconds their compiles took in all), from the first on
CURVE = (("m1", "c1"), ("m2", "c2"), ("m3", "c3"))


def fresh_compile_curve(data: pd.DataFrame) -> dict[str, pd.Series]:
    """The seconds the compiles of the first m fresh batches take, as a line through (0, 0) and three knots per row
    (`CURVE`), flat after the last: the `stream_batches` batches the bench ran (their measured `stream_compile_s`);
    where the planner counted more (`plan_batches`, `plan_compiles`, of them `plan_compiles_tail` in the last
    PLAN_TAIL and `plan_compiles_streamed` in the measured ones), the start of the last PLAN_TAIL and their end,
    each new program at the seconds per program measured (`stream_compile_s / stream_compiles`; where the measured
    batches compiled none, the case's own compile over its own batch's `plan_programs`). Without a planner count
    the three knots coincide: `stream_compile_s` after `stream_batches`; without a stream, no compile at all."""
    cols = ["stream_batches", "stream_compiles", "stream_compile_s", "plan_batches", "plan_compiles",
            "plan_compiles_streamed", "plan_compiles_tail", "plan_programs"]
    f = data.reindex(columns=cols).astype(float)
    m1, c1 = f["stream_batches"].fillna(0.0), f["stream_compile_s"].fillna(0.0)
    each = (f["stream_compile_s"] / f["stream_compiles"]).where(f["stream_compiles"] > 0,
                                                                data["compile"] / f["plan_programs"])
    planned = f["plan_batches"].notna() & each.notna() & (f["plan_batches"] > m1 + PLAN_TAIL)
    m3 = f["plan_batches"].where(planned, m1)
    m2 = (m3 - PLAN_TAIL).where(planned, m1)
    c2 = (c1 + each * (f["plan_compiles"] - f["plan_compiles_tail"] - f["plan_compiles_streamed"])).where(planned, c1)
    c3 = (c2 + each * f["plan_compiles_tail"]).where(planned, c1)
    return {"m1": m1, "c1": c1, "m2": m2, "c2": c2, "m3": m3, "c3": c3}


def calls_cost(r, n: int):
    """Seconds of n calls on n batches of new lengths (a row or a frame of `compile_aware_table`'s data): the
    first call's compile, the compiles of the n - 1 further batches (`fresh_compile_curve`: measured over a few
    fresh batches, counted by the planner over many more where it could; batches past those bring nothing counted,
    so a strategy whose programs still grow costs at least this), and n warm calls."""
    m, fresh, lo = np.minimum(n - 1, r["m3"]), 0.0, (0.0, 0.0)
    for mk, ck in CURVE:
        span = r[mk] - lo[0]
        step = (r[ck] - lo[1]) * np.clip((m - lo[0]) / np.where(span > 0, span, 1.0), 0.0, 1.0)
        fresh, lo = fresh + np.where(span > 0, step, 0.0), (r[mk], r[ck])
    return r["compile"] + fresh + n * r["median_s"]


def cheapest_from(g: pd.DataFrame) -> list[tuple[int, str]]:
    """The lower envelope of the strategies' `calls_cost` over n = 1, 2, ...: [(n, impl), ...], the strategy
    (`impl`) that is cheapest from n calls on until the next entry's n (ties: the first row, as `idxmin` picks).
    Every cost is linear in n past the knee (the most fresh batches counted, + 1), so the cheapest can change only
    at a call count up to the knee or next to a crossing of two of those lines: those are the only counts looked
    at, whatever n the hand-overs take."""
    knee = int(g["m3"].max()) + 1
    at_knee = calls_cost(g, knee).to_numpy(float)
    slope = g["median_s"].to_numpy(float)
    ns = set(range(1, knee + 1))
    for i in range(len(g)):
        for j in range(len(g)):
            if slope[i] < slope[j] and at_knee[i] > at_knee[j]:  # i (faster warm) catches up with j past the knee
                x = knee + (at_knee[i] - at_knee[j]) / (slope[j] - slope[i])
                if math.isfinite(x):
                    ns.update((math.floor(x), math.floor(x) + 1))
    schedule: list[tuple[int, str]] = []
    for n in sorted(ns):
        impl = g.loc[calls_cost(g, n).idxmin(), "impl"]
        if not schedule or schedule[-1][1] != impl:
            schedule.append((n, impl))
    return schedule


def hand_overs(g: pd.DataFrame) -> str:
    """The 'break-even calls' cell: '-' where one strategy is the cheapest for any number of calls, else "B is
    cheaper from n calls on than A", then ", then C from m calls on" for each further hand-over."""
    (_, first), *later = cheapest_from(g)
    if not later:
        return "-"
    (n, impl), *rest = later
    return "".join([f"{impl} is cheaper from {n:,} calls on than {first}",
                    *(f", then {impl} from {n:,} calls on" for n, impl in rest)])


def verdict_matrix(check: pd.DataFrame, ops: list[str] | None = None) -> pd.DataFrame:
    """Recipes and native behaviours (kind idiom/native), one row each with what it does (`why`), one column per
    framework, and what to use instead (`fix`); for the families without a table of their own.

    A framework's cell says WHERE the recipe is wrong: "WRONG on: <cases> (<quantity> err x, ...); exact on:
    <cases>", "raises <ErrorType>: <first line> on: <cases>" for a recipe that raises, "exact on: <cases>" when
    nothing is wrong; information-only records (`judged` False, e.g. attention's padded query rows) are appended as
    "info: ..." and never make a cell WRONG (`verdict_cell`)."""
    df = check[check["kind"].isin(["idiom", "native"])]
    if ops is not None:
        df = df[df["op"].isin(ops)]
    if df.empty:
        return pd.DataFrame()
    keys = ["kind", "family", "name"]
    rows = []
    for (kind, op, name, fw), g in df.groupby(["kind", "op", "name", "framework"], sort=True):
        rows.append({"kind": "recipe" if kind == "idiom" else "native", "family": op, "name": name,
                     "framework": fw, "verdict": verdict_cell(g), "why": _texts(g, "why"), "fix": _texts(g, "fix")})
    t = pd.DataFrame(rows)
    m = t.pivot_table(index=keys, columns="framework", values="verdict", aggfunc="first")
    m.columns.name = None
    grouped = t.groupby(keys, sort=True)
    m.insert(0, "what it does", grouped["why"].agg(lambda s: " / ".join(dict.fromkeys(x for x in s if x))))
    m["use instead"] = grouped.apply(_fixes, include_groups=False)
    return m.reset_index().fillna("-").replace("", "-")


# -- recipe / native verdicts (verdict_matrix) ------------------------------------------------------------------------
#: case-id token -> what a reader calls it (a case id is tokens joined by ":"; unknown tokens read with spaces)
CASE_WORDS = {
    "softmax_ce": "softmax CE", "sigmoid_bce": "sigmoid BCE", "clean_padding": "clean padding",
    "dirty_padding": "NaN/inf logits and out-of-range targets in padding", "all_empty": "all-empty batch",
    "skewed_lengths": "skewed lengths", "keyless": "a batch with a keyless query row",
    "nan_padding": "NaN in padded keys/values", "causal_left": "causal, left padding", "left_lengths": "left padding",
    "pool": "mean pooling over time", "real_token_0": "a real token 0",
    "real_token_0_empty_row": "a real token 0 and an empty row", "ragged_batch": "ragged batch",
    "garbage_padding": "non-zero padding", "zero_padding": "zero padding",
}
#: record fields that tell two cases of one recipe apart, after `case`
WHERE_FIELDS = ("side", "dtype", "cell", "bidirectional")


def _texts(g: pd.DataFrame, col: str) -> str:
    """The distinct non-empty values of a text column, joined."""
    if col not in g:
        return ""
    return " / ".join(dict.fromkeys(str(v) for v in g[col] if isinstance(v, str) and v))


def _fixes(g: pd.DataFrame) -> str:
    """The 'use instead' cell: the fix once when every framework agrees, else "<framework>: <fix>" each."""
    per = {fw: f for fw, f in zip(g["framework"], g["fix"], strict=True) if f}
    if len(set(per.values())) <= 1:
        return next(iter(per.values()), "")
    return "; ".join(f"{fw}: {f}" for fw, f in per.items())


def judged_rows(g: pd.DataFrame) -> pd.Series:
    """Which records count toward a verdict: all but those marked `judged` False (information only) and the
    information-only quantities of records older than that field (`legacy_info`)."""
    judged = frame_col(g, "judged").map(lambda v: v is not False and v is not np.False_)
    return (judged.astype(bool) & ~legacy_info(g)).astype(bool)  # bool even when empty


def where_labels(g: pd.DataFrame) -> pd.Series:
    """Each record's place in words: its case's words (those shared by every case of `g` left out when there are
    several), then the fields of `WHERE_FIELDS` that vary within `g` (e.g. "left padding", "bi")."""
    tokens = g["case"].astype(str).str.split(":")
    shared = set.intersection(*map(set, tokens)) if g["case"].nunique() > 1 else set()
    varying = [f for f in WHERE_FIELDS if f in g and g[f].nunique(dropna=True) > 1]

    def label(i) -> str:
        words = [CASE_WORDS.get(t, t.replace("_", " ")) for t in tokens[i] if t not in shared]
        r = g.loc[i]
        for f in varying:
            v = r[f]
            words.append(f"{v} padding" if f == "side" else ("bi" if v else "uni") if f == "bidirectional"
                         else str(v))
        return ", ".join(words) or "every case"

    return pd.Series([label(i) for i in g.index], index=g.index)


def _outcome(p: pd.DataFrame) -> tuple[str, str]:
    """("wrong" | "raises" | "exact", text) for the judged records of one place."""
    bad = p[~p["equivalent"].astype(bool)]
    if bad.empty:
        return "exact", ""
    errors = [e for e in bad.get("error", pd.Series(dtype=object)) if isinstance(e, str) and e]
    if errors:
        return "raises", error_head(errors[0])
    parts = []
    for q, b in bad.groupby("quantity", sort=False):
        detail = _texts(b, "detail") if "detail" in b else ""
        detail = "" if detail == "finite" else detail  # says nothing about how the quantity is wrong
        parts.append(f"{q} err {fmt(float(b['max_abs_err'].max()))}" + (f": {detail}" if detail else ""))
    return "wrong", ", ".join(parts)


def verdict_cell(g: pd.DataFrame) -> str:
    """One framework's verdict on one recipe or native behaviour (the records `g`): where it is wrong (per case,
    per quantity error), where it raises and what, where it is exact; then what information-only records hold."""
    judged = judged_rows(g)
    places = where_labels(g)
    wrong, raises, exact = [], {}, []
    for place, p in g[judged].groupby(places[judged], sort=False):
        kind, text = _outcome(p)
        if kind == "exact":
            exact.append(place)
        elif kind == "raises":
            raises.setdefault(text, []).append(place)
        else:
            wrong.append(f"{place} ({text})")
    parts = []
    if wrong:
        parts.append("WRONG on: " + "; ".join(wrong))
    parts += [f"raises {err} (on: {'; '.join(where)})" for err, where in raises.items()]
    if exact:
        parts.append("exact on: " + "; ".join(exact))
    info = g[~judged]
    if len(info):
        parts.append("info: " + _texts(info, "detail"))
    return ". ".join(parts) or "-"


def error_head(error: str) -> str:
    """An error's type and the first sentence of its message's first line, without TF's "{{function_node ...}}"
    prefix: "InvalidArgumentError: Received a label value of -100 which is outside the valid range of [0, 7)"."""
    line = re.sub(r"\{\{[^}]*\}\}\s*", "", error.splitlines()[0] if error else "")
    kind, _, msg = line.partition(": ")
    first = re.split(r"(?<=[.!?])\s", msg, maxsplit=1)[0].rstrip(".")
    return f"{kind}: {first}" if msg else kind
