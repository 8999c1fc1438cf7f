"""The report's sections: each one groups/pivots (tables.py), plots (figures.py) and returns a `Section`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.bench import PLAN_TAIL
from harness.families import OP_TITLES, recommended_ops, strategy_ops
from harness.report.figures import barh_panels, errbar, grid_fig, legend_right, plain_log_x, save
from harness.report.render import Section
from harness.report.tables import (
    CONFIG,
    FLOOR_RATES,
    check_frame,
    compile_aware_table,
    config_text,
    cut_off,
    device_names,
    error_head,
    frame,
    headline,
    ideal_fraction,
    incomplete,
    judged_rows,
    kernel_names,
    labelled,
    machine_floors,
    machine_fraction,
    ok,
    recommendation_table,
    setup_floor_rows,
    shape_label,
    status_mark,
    strategy_table,
    varying_config,
    where_labels,
    with_shape,
)
from harness.speedups import RUNOFF


def setup_section(records: list[dict], bench: pd.DataFrame) -> Section:
    s = Section("Setup")
    df = pd.DataFrame(records).reindex(columns=["host", "cpu", "cores", "python", "platform", "commit", "device",
                                                "device_name", "framework", "version", "source"])
    if df.empty:
        return s.p("No records.")
    named = df["device_name"].notna().any()  # records before the field name no device model
    cols = ["host", "cpu", "cores", "python", "platform", "commit", *(["device", "device_name"] if named else [])]
    s.p("Machines and commits the results come from" + (" (the device's model where the records name it)"
                                                         if named else "") + ":")
    machines = df[cols].dropna(subset=["host"])
    if named:  # a record without a device name beside one with it on the same device adds no row of its own
        machines = machines[machines["device_name"].notna() | machines["device"].isna()
                            | ~machines["device"].isin(set(machines.dropna(subset=["device_name"])["device"]))]
        machines = machines.rename(columns={"device_name": "device name"})
    s.table(machines.drop_duplicates().astype(object).fillna("-").reset_index(drop=True))
    if "version" in df.columns:
        fw = df.dropna(subset=["framework", "version"])
        t = fw[["framework", "version"]].drop_duplicates().sort_values(["framework", "version"])
        if not bench.empty and "version" in bench.columns:  # each build's own devices: a CPU wheel ran no GPU case
            devices = bench.groupby(["framework", "version"])["device"].agg(lambda d: ", ".join(sorted(set(d))))
            t = t.merge(devices.rename("devices benchmarked").reset_index(), how="left", on=["framework", "version"])
        t = t.reindex(columns=["framework", "version", "devices benchmarked"]).astype(object).fillna("-")
        t = t.reset_index(drop=True)
        s.table(t)
    fl = setup_floor_rows(records)
    if not fl.empty:
        s.p("Floors, measured by each worker with its own framework on the device it benchmarks (a 256 MiB "
            "array copy counting bytes read + written; a 2048^3 float32 matrix product, TF32 off); the best of a "
            "machine and device is its floor ('Fraction of the machine's floor'):")
        s.table(fl)
    return s


def overhead_section(records: list[dict]) -> Section:
    s = Section("Adapter overhead")
    ov = frame(records, "overhead")
    if ov.empty:
        return s.p("Not measured (it runs with `varlen bench --quick`).")
    s.p("The adapter's default RNN strategy (validation, conversion, zero-length and left-padding handling "
        "included) against the same framework code written the way a user would (pack + nn.LSTM for torch, "
        "masked Keras layers under tf.function, a masked lax.scan under jax.jit), forward and forward + backward, "
        "interleaved in one process; the median of the per-round ratios, adapter over raw (records before "
        "2026-12-05: the ratio of the medians; 1.00 = no overhead; the goal is <= 1.05).")
    cols = ["device", "framework", "strategy", "kernel", "op", "cell", "batch", "max_len", "hidden", "profile",
            "raw_median_s", "adapter_median_s", "overhead_ratio"]
    return s.table(ov[cols].fillna({"kernel": "(not recorded)"}).round(5))


def paired_section(records: list[dict]) -> Section:
    """The sweep's speedups timed again side by side (`harness.paired`): the ratio a reader can trust on a machine
    whose speed drifts between cases; and on equal lengths, what each profile's winner costs where there is no
    padding to skip. `records` as `build` selected them (`results.select`: the latest record of each pair)."""
    s = Section("Speedups timed side by side")
    pr = frame(records, "paired")
    check = check_frame(records)
    if pr.empty:
        return s.p("Not measured (`varlen bench` times each speedup it prints again side by side, unless "
                   "--no-side-by-side).")
    s.p("Each speedup `varlen bench` printed, timed again: the fastest strategy on the length profile and the "
        "framework's padded baseline (its fastest strategy on equal lengths, same shape, decided side by side "
        "first: see below) prepared in one process "
        "and called in alternation (each block of timed calls after one untimed call of its own, so neither is timed "
        "on the caches the other left), the order flipped every round, so a machine that slows down between cases "
        "(shared CPUs drift 20-30% over a minute) slows both alike. Where other strategies' sweep times came within "
        f"{RUNOFF:g}x of the fastest one's (closer than the drift lets a sweep order them), each was timed against the "
        "baseline the same way, and the highest ratio is the one the recommendation shows: one row per strategy "
        "timed. 'x side by side' = the median of the per-round ratios (each round's baseline time over its "
        "strategy time: drift common to both cancels; records before 2026-12-05 hold baseline median / strategy "
        "median); 'rounds p25-p75' = their quartiles; 'ideal x' = padded work / valid work; 'fraction of ideal' = "
        "the ideal time (the baseline's time x the valid share) over the strategy's, here from the side-by-side "
        "ratio ('x side by side' / 'ideal x'), the definition every table of this report uses where a pair was timed "
        f"side by side. Rounds whose quartiles lie more than {NOISY:g}x apart are marked 'noisy': the machine was "
        "busy or drifting faster than a round, and that ratio says little. " + MARKS)
    speed = pr[pr["profile"] != "equal"]
    if not speed.empty:
        t = pd.DataFrame({
            **_pair_case(speed), "profile": speed["profile"],
            "padding": speed["padding_fraction"].astype(float).round(2),
            "strategy [kernel]": _labelled(speed, "", check), "baseline [kernel]": _labelled(speed, "base_", check),
            "baseline ms": (speed["base_median_s"] * 1e3).round(2), "strategy ms": (speed["median_s"] * 1e3).round(2),
            "x side by side": speed["ratio"].round(2),
            "rounds p25-p75": speed["ratio_p25"].map("{:.2f}".format) + "-" + speed["ratio_p75"].map("{:.2f}".format)
            + _noisy(speed),
            "ideal x": (1 / speed["ideal_share"].astype(float)).round(2),
            "fraction of ideal": [round(ideal_fraction(np.nan, x, share), 2)
                                  for x, share in zip(speed["ratio"], speed["ideal_share"], strict=True)],
        })
        s.table(t.sort_values([c for c in ("host", "device", "op", "framework", "profile") if c in t]))
    equal = pr[pr["profile"] == "equal"]
    if not equal.empty:
        s.p("On equal lengths (no padding to skip), timed first: the sweep's fastest strategy here against each "
            f"strategy within {RUNOFF:g}x of it here and each that is fastest (or a contender) on some other profile, "
            "timed the same way. Where one of them was faster (the sweep's order here is as unsure as on any "
            "profile), it is the padded baseline, and the others, the sweep's fastest among them, were timed against "
            "it again (rows whose 'fastest' is that strategy). 'time / fastest' = the median of the per-round "
            "strategy / baseline times (above 1.05: it costs more than 5% on unpadded batches; below 1: faster than "
            "the sweep's pick); its rounds p25-p75 likewise.")
        t = pd.DataFrame({
            **_pair_case(equal), "strategy [kernel]": _labelled(equal, "", check),
            "fastest [kernel]": _labelled(equal, "base_", check),
            "fastest ms": (equal["base_median_s"] * 1e3).round(2), "strategy ms": (equal["median_s"] * 1e3).round(2),
            "time / fastest": (1 / equal["ratio"]).round(3),
            "rounds p25-p75": (1 / equal["ratio_p75"]).map("{:.3f}".format) + "-"
            + (1 / equal["ratio_p25"]).map("{:.3f}".format) + _noisy(equal),
        })
        s.table(t.sort_values([c for c in ("host", "device", "op", "framework") if c in t]))
    return s


#: a side-by-side pair whose rounds' quartiles lie further apart than this factor is marked noisy (a quiet 2-core
#: machine keeps them within ~1.1x; a loaded one gave 0.23-0.94 for a pair of one strategy against another)
NOISY = 1.5


def _noisy(d: pd.DataFrame) -> pd.Series:
    """" noisy" for each paired record whose rounds' p75 / p25 exceeds NOISY, else ""."""
    spread = d["ratio_p75"].astype(float) / d["ratio_p25"].astype(float)
    return pd.Series(np.where(spread > NOISY, " noisy", ""), index=d.index)


def _pair_case(d: pd.DataFrame) -> dict:
    """The case columns of a table of `paired` records, the host among them where the records come from several
    (two machines' pairs of one case are otherwise two rows told apart by nothing)."""
    host = {"host": d["host"]} if "host" in d and d["host"].nunique(dropna=True) > 1 else {}
    return {**host, "device": d["device"], "framework": d["framework"],
            "op": d["op"].map(lambda op: OP_TITLES.get(op, op)), "cell": d["cell"].fillna("-"), "B": d["batch"],
            "T": d["max_len"]}


def _labelled(d: pd.DataFrame, prefix: str, check: pd.DataFrame | None = None) -> pd.Series:
    """'strategy [kernel]' of a paired record's strategy (prefix "") or its baseline (prefix "base_"), marked where
    it is not proven exact on the record's device (`status_mark`)."""
    return (d[prefix + "strategy"] + " [" + d[prefix + "kernel"] + "]"
            + status_mark(d, check, strategy=prefix + "strategy"))


def failed_section(df: pd.DataFrame) -> Section:
    s = Section("Failed benchmark cases")
    bad = df[df["status"] == "failed"]
    skipped = df[df["status"] == "unsupported"]
    if len(skipped):
        s.p(f"{len(skipped)} case(s) were not run because their strategy's precondition excludes them here "
            "(e.g. a GPU-only kernel on the CPU): " + "; ".join(sorted(set(skipped["error"].astype(str)))[:10]))
    if bad.empty:
        return s.p("None failed: every supported case of the sweep was measured.")
    return s.table(bad[["framework", "op", "strategy", "device", "batch", "max_len", "profile", "error"]]
                   .assign(ok=False), fail_col="ok")


def throughput_section(df: pd.DataFrame, out: Path, check: pd.DataFrame | None = None) -> Section:
    """Throughput against padding (each op's headline B and T) and against batch size, one line per strategy and
    configuration (`varying_config`: cell, hidden size, host, ... where they vary: their values in the legend);
    strategies not proven exact on the device are marked (`status_mark`, from `check`)."""
    s = Section("Throughput vs length skew and batch size")
    done = ok(df)
    for device, d in done.groupby("device"):
        head = headline(d)
        ops = [op for op in OP_TITLES if op in set(head["op"])]
        if ops:
            fig, axes = grid_fig(len(ops))
            for ax, op in zip(axes, ops):
                at_op = head[head["op"] == op]
                cfg = varying_config(at_op) + _names_vary(at_op)
                for label, g in at_op.groupby(_legend(at_op, cfg, check)):
                    errbar(ax, g, "padding_fraction", label)
                _ideal_lines(ax, at_op, cfg, check)
                at = at_op.iloc[0]
                ax.set(title=f"{OP_TITLES[op]} ({_device(at_op, device)}, {shape_label(at['batch'], at['max_len'])})",
                       xlabel="padding fraction (share of padded steps)", ylabel="valid tokens / s", yscale="log")
                legend_right(ax)
            s.figure(save(fig, out, f"throughput_skew_{device}.png"),
                     f"Valid tokens per second vs padding fraction ({device}); each point is one length profile "
                     "(equal has 0 padding; zipf the most); error bars span the quartiles of the repeats; one line "
                     "per strategy and model configuration (the legend names the configuration where it varies). "
                     "Dashed: each framework's ideal per configuration, its fastest exact time on the fully padded "
                     "batch scaled by the valid share of the work (linear ops: valid/padded tokens; attention: sum "
                     "L^2 / B T^2); a line drawn from a baseline not proven exact on this device says so. "
                     + MARKS)
        by_batch = d[d.groupby(["op", "max_len", "profile"])["batch"].transform("nunique") > 1]
        if not by_batch.empty:
            ops = [op for op in OP_TITLES if op in set(by_batch["op"])]
            fig, axes = grid_fig(len(ops))
            for ax, op in zip(axes, ops):
                g_op = by_batch[by_batch["op"] == op]
                cfg = varying_config(g_op) + _names_vary(g_op) + [c for c in ("profile", "max_len")
                                                                 if g_op[c].nunique() > 1]
                for label, g in g_op.groupby(_legend(g_op, cfg, check)):
                    errbar(ax, g, "batch", label)
                prof, T = g_op["profile"].iloc[0], g_op["max_len"].iloc[0]
                where = ", ".join([*([prof] if "profile" not in cfg else []), *([f"T={T}"] if "max_len" not in cfg
                                                                               else [])])
                ax.set(title=f"{OP_TITLES[op]} ({_device(g_op, device)}{', ' + where if where else ''})",
                       xlabel="batch size (sequences)", ylabel="valid tokens / s", yscale="log")
                plain_log_x(ax, g_op["batch"])
                legend_right(ax)
            s.figure(save(fig, out, f"throughput_batch_{device}.png"),
                     f"Valid tokens per second vs batch size ({device}); error bars span the quartiles; one line per "
                     "strategy and configuration. " + MARKS)
    return s


def _device(d: pd.DataFrame, device: str) -> str:
    """A figure title's device: "gpu: NVIDIA H100 80GB HBM3" where the records name its model, else "gpu"."""
    names = device_names(d)
    return f"{device}: {names}" if names else device


def _names_vary(d: pd.DataFrame) -> list[str]:
    """["device_name"] where d's records name more than one device model (each line then names its own)."""
    return ["device_name"] if "device_name" in d and d["device_name"].nunique() > 1 else []


#: what a figure's caption says of the marks `_legend` puts after a strategy
MARKS = ("A strategy not proven exact on this device is marked '(unchecked)' (never checked there), '(incomplete)' "
         "(its check was cut off) or '(WRONG)' (a cell failed).")


def _legend(df: pd.DataFrame, cfg: list[str], check: pd.DataFrame | None) -> pd.Series:
    """Each row's legend entry: "framework:strategy [kernels]" per strategy and configuration `cfg`, the values of
    `cfg` (" (cell gru)") and the strategy's mark where it is not proven exact on the device (`status_mark`)."""
    return labelled(df, ["impl", *cfg]) + config_text(df, cfg) + status_mark(df, check)


def _ideal_lines(ax, g: pd.DataFrame, cfg: list[str], check: pd.DataFrame | None) -> None:
    """The ideal throughput per framework and configuration `cfg`: its padded baseline's time (its fastest exact
    strategy on equal lengths, as the recommendation's) x ideal_share, at each measured profile; where no strategy
    on equal lengths is proven exact on the device, from the fastest one, and the legend says so."""
    marks = status_mark(g, check)
    for key, f in g.groupby(["framework", *cfg], dropna=False):
        fw = key[0] if isinstance(key, tuple) else key
        equal = f[f["profile"] == "equal"]
        if equal.empty or f["ideal_share"].isna().all():
            continue
        exact = equal[marks.loc[equal.index] == ""]
        base = (exact if len(exact) else equal).loc[lambda e: e["median_s"] == e["median_s"].min()].iloc[0]
        note = "" if len(exact) else f"; its baseline {base['strategy']} is not proven exact{marks.loc[base.name]}"
        pts = f.groupby("profile").agg(x=("padding_fraction", "first"), share=("ideal_share", "first"),
                                       valid=("valid_tokens", "first")).sort_values("x")
        conf = config_text(f.iloc[:1], cfg).iloc[0]
        ax.plot(pts["x"], pts["valid"] / (base["median_s"] * pts["share"]), linestyle="--", linewidth=1,
                label=f"ideal ({fw}{', ' + conf.strip()[1:-1] if conf else ''}{note})")


def memory_section(df: pd.DataFrame, out: Path, check: pd.DataFrame | None = None) -> Section:
    """Peak memory: how it was measured, the cases that fault their memory in afresh, RNN peaks against batch size
    and length, and a table of each strategy's own peak per op (never a median over strategies or
    configurations); strategies not proven exact on the device are marked (`status_mark`)."""
    s = Section("Memory")
    done = ok(df).dropna(subset=["peak_bytes"])
    s.p("Peak bytes of one call above what the inputs already hold: on CPU the process's peak RSS above its RSS "
        "just before the call (high-water mark reset per case), or for TensorFlow, whose CPU allocator keeps the "
        "memory its first calls took (RSS then barely grows), the larger of that and its allocator's own peak "
        "above what it held; on GPU the framework allocator's peak during one call above what it held just before "
        "(JAX, whose peak cannot be reset, in a process of its own per case: its peak since the process started). "
        "GPU records of the older method ('allocator peak (reset per case)') count everything the process held "
        "while the case ran: its inputs and, for torch, the floors' 256 MiB copy buffer. Allocator caches make "
        "small CPU figures noisy (a few MB) and can hide a call's working set from RSS (JAX's smaller cases read "
        "near 0); differences between strategies of one framework are what matters.")
    if not done.empty and "memory_method" in done:
        how = done.groupby(["device", "framework", done["memory_method"].astype(object).fillna("-")]).size()
        s.p("How the figures were measured (cases per method):")
        s.table(how.rename("cases").reset_index())
    faults_paragraph(s, ok(df))
    rnn = done[done["op"] == "rnn_forward_backward"]
    panels = [("batch", "max_len"), ("max_len", "batch")]
    fig, axes = grid_fig(2)
    drawn = False
    cfg = varying_config(rnn)
    for ax, (x, fixed) in zip(axes, panels):
        for _, g in rnn.groupby(["impl", "device", *cfg], dropna=False):
            g = g[g["profile"] == "lognormal"]
            g = g[g[fixed] == g[fixed].mode().iloc[0]] if len(g) else g
            if g[x].nunique() > 1:
                g = g.sort_values(x)
                first = g.iloc[:1]
                ax.plot(g[x], g["peak_bytes"] / 2**20, marker="o",
                        label=f"{first['impl'].iloc[0]} [{kernel_names(g['kernel'])}] ({first['device'].iloc[0]})"
                        + config_text(first, cfg).iloc[0] + status_mark(first, check).iloc[0])
                drawn = True
        ax.set(title=f"RNN fwd+bwd peak memory vs {x.replace('_', ' ')} (lognormal)",
               xlabel="batch size (sequences)" if x == "batch" else "max length T (steps)",
               ylabel="peak MiB above the RSS before the call")
        plain_log_x(ax, rnn[x])
        if ax.get_legend_handles_labels()[0]:
            legend_right(ax)
    if drawn:
        s.figure(save(fig, out, "memory.png"), "Peak memory of one RNN forward+backward call vs batch size and "
                 "max length.")
    if done.empty:
        return s.p("No memory figures were measured.")
    profile = "lognormal" if (done["profile"] == "lognormal").any() else done["profile"].mode().iloc[0]
    head = headline(done)  # the point of every profile first: the batch and length sweeps are lognormal only
    head = with_shape(head[head["profile"] == profile])
    s.p(f"Peak MiB per op at each op's most frequent batch size and length on each device ('shape'), {profile} "
        "lengths: each strategy's own peak, one row per strategy and configuration (where one varies), its kernels "
        "over the ops of the row; '-' where it did not run that op. " + MARKS)
    is_rnn = head["op"].str.startswith("rnn")
    for part in (head[~is_rnn], head[is_rnn]):
        if not part.empty:
            s.table(_peaks(part, check))
    return s


def _peaks(part: pd.DataFrame, check: pd.DataFrame | None) -> pd.DataFrame:
    """device x shape x configuration x strategy rows, one column of peak MiB per op: each strategy's own figure
    (a case has one record per host and configuration: 'max' only ever meets one value)."""
    cfg = varying_config(part)
    keys = ["device", "shape", *cfg, "strategy [kernels]"]
    part = part.assign(**{"strategy [kernels]": labelled(part, ["device", "shape", *cfg, "impl"])
                          + status_mark(part, check)})
    part = part.assign(**{c: part[c].astype(object).where(part[c].notna(), "-") for c in cfg})
    t = part.pivot_table(index=keys, columns="op", values="peak_bytes", aggfunc="max").div(2**20).round(2)
    t = t[[op for op in OP_TITLES if op in t.columns]]
    t.columns = [f"{OP_TITLES.get(c, c)} (MiB)" for c in t.columns]
    return t.reset_index()


#: MiB faulted in per timed call from which a case is listed: its time includes faulting that memory in
FAULTED_MIB = 8


def faults_paragraph(s: Section, done: pd.DataFrame) -> None:
    """The cases whose timed calls faulted FAULTED_MIB or more in afresh on every call (`faulted_bytes_per_call`:
    memory the allocator gave back to the OS between calls), or one sentence that none did; nothing for records
    older than the measurement."""
    if "faulted_bytes_per_call" not in done or done["faulted_bytes_per_call"].isna().all():
        return
    mib = pd.to_numeric(done["faulted_bytes_per_call"], errors="coerce").to_numpy(float) / 2**20  # by position
    many = mib >= FAULTED_MIB
    heavy = done[many].assign(mib=mib[many])
    if heavy.empty:
        worst = done.iloc[int(np.nanargmax(mib))]
        s.p(f"Page faults: no timed call faulted {FAULTED_MIB} MiB or more in afresh (the most: "
            f"{np.nanmax(mib):.1f} MiB a call, {worst['framework']} {worst['strategy']} "
            f"{OP_TITLES.get(worst['op'], worst['op'])}), so no "
            "time here includes the OS handing a call's buffers back in.")
        return
    s.p(f"Page faults: these cases' timed calls each faulted {FAULTED_MIB} MiB or more in afresh (memory the "
        "allocator returned to the OS after the previous call), so their times include the kernel's page faults, "
        "not only the computation (JAX's padded calls did so, 80-180 MiB a call, until its workers ran glibc with one "
        "arena: `harness/proc.py`). The record's 'malloc' field says how the allocator ran.")
    t = pd.DataFrame({"device": heavy["device"], "framework": heavy["framework"],
                      "op": heavy["op"].map(lambda op: OP_TITLES.get(op, op)), "strategy": heavy["strategy"],
                      "profile": heavy["profile"], "B": heavy["batch"], "T": heavy["max_len"],
                      "MiB faulted a call": heavy["mib"].round(1), "ms a call": (heavy["median_s"] * 1e3).round(2),
                      "malloc": heavy["malloc"] if "malloc" in heavy else "-"})
    s.table(t.sort_values("MiB faulted a call", ascending=False))


def compile_section(df: pd.DataFrame, out: Path) -> Section:
    s = Section("Compile time")
    rnn = ok(df)[ok(df)["op"].isin(strategy_ops())].dropna(subset=["compile_s"])
    if rnn.empty:
        return s.p("No compile times (no strategy benchmarks, or every shape was compiled by an earlier case).")
    t = shape_compiles(rnn)
    s.p("First call minus a warm call, for the case's shape (jax.jit / tf.function trace and compile; eager "
        "strategies show ~0). No timed region includes a compile (checked in every one). Each row is one shape "
        "(B, T and model configuration) of a strategy: the compile its first case paid, the largest over the length "
        "profiles, since later profiles of the same shape reuse what it compiled (they record ~0 or nothing).")
    cfg = [c for c in t.columns if c in CONFIG]
    labels = (t["impl"] + " [" + t["kernel"] + "] (" + t["device"] + ", " + t["shape"] + ")" + config_text(t, cfg))
    panels = [(OP_TITLES[op], labels[g.index], g["compile s (max over profiles)"])
              for op, g in t.sort_values(["op", "impl", "device"], ascending=False).groupby("op", sort=False)]
    fig = barh_panels(panels, "compile seconds (the shape's first compile)")
    s.figure(save(fig, out, "compile.png"), "Compile (trace) seconds per framework, strategy and shape.")
    s.table(t.assign(**{c: t[c].astype(object).where(t[c].notna(), "-") for c in cfg}).round(3))
    stream = ok(df)[ok(df)["op"].isin(strategy_ops())].dropna(subset=["stream_batches"])
    if stream.empty:
        return s
    s.p("New lengths, new compiles? A padded strategy compiles once per padded shape, whatever the lengths; a "
        "strategy whose plan follows the lengths (bucketed, concat_rows, ...) compiles each new plan shape once. "
        "After timing a case of a compiled framework (at the headline batch and length, every profile but equal), "
        "the bench forgot every compiled function, ran the case's own batch (its shapes: the compile figure above) "
        "and then fresh batches of the same length distribution: the compiles they added and their seconds (each "
        "compiling batch's first call minus its second). The compile-aware ranking in 'Recommendation' charges "
        "them per new batch. Strategies that compiled nothing new are left out of the table; every one that was "
        "measured is counted in the last line.")
    planned = ["plan_compiles_streamed", "plan_batches", "plan_compiles", "plan_compiles_tail"]
    stream = stream.reindex(columns=[*stream.columns, *(c for c in planned if c not in stream.columns)])
    t = stream.groupby(["device", "op", "impl", "profile", "batch", "max_len"]).agg(
        fresh_batches=("stream_batches", "max"), new_compiles=("stream_compiles", "max"),
        compile_s=("stream_compile_s", "max"), warm_s=("median_s", "median"),
        **{c: (c, "max") for c in planned}).reset_index()
    t["their compile s in warm calls"] = (t["compile_s"] / t["warm_s"]).round(0)
    t = t.assign(warm_s=(t["warm_s"] * 1e3).round(2)).rename(columns={
        "fresh_batches": "fresh batches", "new_compiles": "new compiles", "compile_s": "their compile s",
        "warm_s": "warm ms", "plan_compiles_streamed": "planner: new programs in the fresh batches",
        "plan_batches": "planner: more fresh batches", "plan_compiles": "planner: new programs in them",
        "plan_compiles_tail": f"planner: of them in the last {PLAN_TAIL}"})
    plans = [c for c in t.columns if c.startswith("planner")]
    t = t[[c for c in t.columns if c not in plans] + (plans if t[plans].notna().any().any() else [])]
    grew = t[(t["new compiles"] > 0) | (t.get("planner: new programs in them", t["new compiles"]) > 0)]
    if grew.empty:
        s.p("No strategy compiled a new shape for a new batch.")
    else:
        s.table(grew.assign(**{c: grew[c].astype(object).where(grew[c].notna(), "-")
                               for c in grew.columns if c.startswith("planner")}).round(3))
    if "planner: more fresh batches" in t.columns:
        s.p("A few fresh batches cannot show whether compiles settle. Where a strategy's compiled programs follow "
            "its plan, its own host planner named the programs of many more fresh batches, compiling nothing "
            "(`Adapter.programs`; the gates prove it names exactly what each batch compiles): 'planner: new "
            "programs in them' is what a stream of that many batches compiles, the last column whether it still "
            f"compiles in the last {PLAN_TAIL} of them, and 'planner: new programs in the fresh batches' "
            "its count for the timed fresh batches (the same batches as 'new compiles').")
    return s.p(f"Measured: {len(t)} cases; {len(t) - len(grew)} compiled nothing for their fresh batches "
               f"({', '.join(sorted(set(t.loc[t['new compiles'] == 0, 'impl'])))}).")


def shape_compiles(d: pd.DataFrame) -> pd.DataFrame:
    """device x op x strategy x shape (B, T and the configuration fields that vary, `varying_config`): the compile
    of the shape, the largest `compile_s` over its profiles (the first case of a shape compiles it, the others of
    the same worker find it compiled: a median would read ~0), with the kernels that ran."""
    cfg = varying_config(d)
    keys = ["device", "op", "impl", "batch", "max_len", *cfg]
    t = d.groupby(keys, dropna=False).agg(kernel=("kernel", kernel_names), compile_s=("compile_s", "max"),
                                          profiles=("profile", "nunique")).reset_index()
    t.insert(3, "shape", [shape_label(b, m) for b, m in zip(t["batch"], t["max_len"], strict=True)])
    return t.drop(columns=["batch", "max_len"]).rename(columns={"compile_s": "compile s (max over profiles)",
                                                          "profiles": "profiles timed"})


def floor_section(df: pd.DataFrame, records: list[dict], out: Path, check: pd.DataFrame | None = None) -> Section:
    """Each framework's best strategy per op, device and configuration (`varying_config`: never one configuration's
    strategy standing for another's) against the machine's floor; strategies not proven exact on the device are
    marked (`status_mark`)."""
    s = Section("Fraction of the machine's floor")
    floors = machine_floors(records)
    done = ok(df)
    done = done.assign(fraction_of_floor=machine_fraction(done, floors)).dropna(subset=["fraction_of_floor"])
    if done.empty:
        return s.p("No floors measured.")
    head = headline(done)
    cfg = varying_config(head)
    fastest = head.sort_values("median_s").groupby(["device", "op", *cfg, "framework", "profile"], dropna=False).head(1)
    best = fastest.loc[fastest.groupby(["device", "op", *cfg, "framework"], dropna=False)["fraction_of_floor"].idxmax()]
    best = best.sort_values(["device", "op", *cfg, "framework"])
    best = best.assign(strategy=best["strategy"] + status_mark(best, check), conf=config_text(best, cfg))
    best = best[["device", "op", *cfg, "framework", "strategy", "profile", "fraction_of_floor", "floor", "kernel",
                 "conf"]].reset_index(drop=True)
    s.p("Floor time = ideal bytes / measured copy bandwidth (memory-bound ops) or matrix-product FLOPs on valid "
        "tokens / measured float32 GEMM rate (RNNs, attention); fraction = floor time / measured time, for the "
        "best strategy of each framework (its best profile). Each worker measures the floors with its own "
        "framework on the device it benchmarks ('Setup' lists them); a machine's floor is the best rate any of "
        "them reached there, since one framework's primitive can fall far short of the machine (below). A fused "
        "kernel can still beat a plain GEMM and so go above 1.")
    used = floors.dropna(subset=list(FLOOR_RATES.values()), how="all")
    if not used.empty:
        s.table(pd.DataFrame({
            "machine": used["host"].astype(str) + " (" + used["cpu"].astype(str) + ", "
            + used["cores"].map(lambda c: "?" if pd.isna(c) else str(int(c))) + " cores)",
            "device": used["device"] + used["device_name"].map(lambda n: "" if pd.isna(n) or not n else f": {n}"),
            "copy GB/s": (used["copy_bytes_per_s"] / 1e9).round(1), "copy measured with": used["copy_by"],
            "GEMM GFLOP/s": (used["gemm_flop_per_s"] / 1e9).round(0), "GEMM measured with": used["gemm_by"]}))
    labels = (best["op"].map(OP_TITLES) + best["conf"] + " / " + best["framework"] + ":" + best["strategy"] + " ["
              + best["kernel"] + "] (" + best["device"] + ")")
    fig = barh_panels([("Best strategy per framework, op and configuration", labels, best["fraction_of_floor"])],
                      "fraction of floor (log)", log=True)
    s.figure(save(fig, out, "floor.png"), "Fraction of the copy-bandwidth / GEMM floor reached, per framework, op and "
             "model configuration (named where it varies). " + MARKS)
    best = best.drop(columns="conf").astype({c: object for c in cfg})
    return s.table(best.fillna({c: "-" for c in cfg}).round(4))


def recommendation_section(df: pd.DataFrame, check: pd.DataFrame, paired: pd.DataFrame | None = None) -> Section:
    s = Section("Recommendation")
    t = recommendation_table(df, check, paired)
    if t.empty:
        return s.p("No strategy benchmarks of an exact (checked) strategy.")
    s.p("For each op, length profile and device: the fastest strategy of each framework that passed every equivalence "
        "cell (where several came within the sweep's drift of each other, the one with the highest ratio timed side "
        "by side), and the overall winner. 'padded baseline' = that framework's fastest exact strategy on the fully "
        "padded batch (profile equal, same B and T: what ignoring the lengths costs): the sweep's fastest there, "
        "unless a strategy timed side by side against it there was faster (on equal lengths the row is that "
        "baseline); 'x vs padded baseline' = the time of the sweep's fastest strategy on equal lengths ('sweep's "
        "fastest padded') over this time, both from the sweep; 'x side by side' = the padded baseline's time over "
        "this one's, both timed in alternation in one process (see 'Speedups timed side by side'; the figure to trust "
        "where the machine's speed drifts); 'cost on equal lengths' = this strategy's time over the baseline's on "
        "equal lengths, timed side by side (1 where it is the baseline's own strategy; missing where not timed): what "
        "it costs where there is no padding; 'ideal x' = the speedup a strategy that skipped all padded work would "
        "get (padded work / valid work: valid / padded tokens, for attention sum L^2 / B T^2), and 'fraction of "
        "ideal' = the ideal time (the padded baseline's time x the valid share) over this time, i.e. the speedup x "
        "the valid share, from 'x side by side' where the pair was timed side by side, else from 'x vs padded "
        "baseline' (the same definition in every table of this report); above 1 the strategy also does its valid work "
        "faster than the baseline's kernel does, or the baseline paid something the strategy does not (JAX's padded "
        "baselines faulted their buffers in on every call until its workers ran glibc with one malloc arena: records "
        "from before read JAX's concat_rows at 1.02-1.32 of the ideal, 0.94-0.95 since). For torch RNNs the baseline "
        "is one fused padded call (oneDNN on CPU, cuDNN on GPU: 'time_sliced' on equal lengths runs exactly that "
        "call, kernel 'sliced[1]x ...'), so on a GPU, where an RNN step is latency-bound, it is also the practical "
        "floor: the time of the inexact padded cuDNN call a user gives up for correctness. For embeddings and losses "
        "it is the plain lookup and the loss primitive on the logits as they are (a batch without padding needs no "
        "mask, so every strategy of those families runs that). Frameworks benchmarked but never checked are listed as "
        "unchecked and never recommended.")
    s.table(t)
    every = strategy_table(df, check, paired)
    if not every.empty:
        s.p("Every strategy of every case, exact or not: its time ('ms', the sweep's median), its speedup over its "
            "framework's padded baseline (the same baseline as above) timed side by side where that pair was, else "
            "from the sweep ('timed' says which), and its fraction of the ideal from that speedup (speedup x the "
            "valid share, as above). A framework with no exact strategy on equal lengths at that shape has no padded "
            "baseline ('-'). " + MARKS)
        s.table(every)
    ca = compile_aware_table(df, check, paired)
    if not ca.empty:
        s.p("Counting compile cost: the fastest exact strategy for a given number of calls, each on a new batch of "
            "the profile's lengths (compile time + the compiles new batches brought + n x warm time, as the runoff "
            "above timed it where it decided; compiled "
            "strategies pay their jit / tf.function compile, torch's graph_loop its CUDA-graph capture, once per "
            "shape; the compiles of new batches are those measured over a few fresh batches ('Compile time'), "
            "and, where the strategy's planner counted them, the new programs of many more fresh batches at the "
            "seconds per program measured; batches past those are charged nothing, so a strategy whose programs "
            "keep growing costs at least this), "
            "and the break-evens: the strategy that is cheapest for a single call, then each one that takes over as "
            "the calls grow, from the number of calls where it becomes the cheapest.")
        s.table(ca)
    return s


def asv_section(out: Path, asv_html: Path | None) -> Section:
    s = Section("asv dashboard")
    if asv_html is not None and (asv_html / "index.html").exists():
        import os

        rel = os.path.relpath(asv_html / "index.html", out)
        s.blocks.append(("link", (rel, "Open the asv dashboard")))
        return s.p("Published with `asv publish`; `asv preview` serves it over HTTP (some browsers refuse its "
                   "data files from file://).")
    return s.p("Not published yet: run `make asv` (asv run + asv publish), then rebuild this report.")




def summary_section(check: pd.DataFrame, df: pd.DataFrame, paired: pd.DataFrame | None = None) -> Section:
    """What a reader in a hurry acts on: per device and length distribution the recommended strategy (and batching
    policy) per framework with its speedup and fraction of the ideal; how many strategies are proven exact; which
    recipes and native behaviours are wrong, one line each."""
    s = Section("Summary")
    rec = recommendation_table(df, check, paired) if not df.empty else pd.DataFrame()
    rec = rec[rec["op"] != "-"] if not rec.empty else rec  # not the rows that list unchecked strategies
    if not rec.empty:
        head = rec[rec["op"] == OP_TITLES.get("rnn_forward_backward")]
        head = head if not head.empty else rec[rec["op"] == rec["op"].iloc[0]]
        best_policy = _best_policies(df)
        cfg = [c for c in CONFIG if c in head.columns]  # the configurations the table tells apart (cell, dtype, ...)
        for key, g in head.groupby(["device", "shape", *cfg, "profile"], dropna=False, sort=False):
            device, shape, profile, conf = key[0], key[1], key[-1], dict(zip(cfg, key[2:-1], strict=True))
            if profile == "equal":  # the padded baseline itself
                continue
            parts = []
            for _, r in g.iterrows():
                pol = best_policy.get((device, profile, r["framework"]))
                parts.append(f"{r['framework']}: {r['fastest exact strategy']} [{r['kernel']}]"
                             + (f" with {pol} batches" if pol else "")
                             + (" (no padded baseline measured at this shape on its machine"
                                if pd.isna(r["x vs padded baseline"]) else
                                f" ({r['x vs padded baseline']:.2f}x "
                                + ("the padded baseline" if not rebased(r) else "the sweep's fastest padded strategy"))
                             + (f", {r['x side by side']:.2f}x side by side" if pd.notna(r["x side by side"]) else "")
                             + (f" against the padded baseline {r['padded baseline']}" if rebased(r) else "")
                             + (f", {r['x vs default']:.2f}x the framework's default strategy"
                                if pd.notna(r["x vs default"]) and r["x vs default"] != 1 else "")
                             + _ideal_text(r["ideal x"], r["fraction of ideal"])
                             + (f"; {r['cost on equal lengths']:.2f}x the baseline's time on equal lengths"
                                if pd.notna(r["cost on equal lengths"]) and r["cost on equal lengths"] != 1 else "")
                             + _fresh(r) + ")")
            what = ", ".join(f"{k} {v}" for k, v in conf.items() if pd.notna(v))
            s.p(f"{head['op'].iloc[0]} on {device} at {shape}{' (' + what + ')' if what else ''}, {profile} lengths "
                f"({g['padding'].iloc[0]:.0%} padding): " + "; ".join(parts) + "."
                + _coverage(df, head["op"].iloc[0], device, conf, profile))
        others = _other_ops(rec[rec["op"] != head["op"].iloc[0]])
        if not others.empty:
            s.p("Every other op: each framework's fastest exact strategy per device and length distribution, its "
                "speedup over its own padded baseline (timed side by side where it was, else across the sweep) and "
                "that speedup's fraction of the ideal; last, the framework whose strategy took the least time "
                "(details in 'Recommendation'):")
            s.table(others, fold=False)
    if not check.empty:
        st = check.assign(cut=incomplete(check))
        st = st[st["kind"].isin(["op", "strategy"])]
        g = st.groupby(["framework", "op", "name", "device"])
        per, cut = g["equivalent"].all(), g["cut"].any()
        failing = ", ".join(f"{fw}/{op}/{name} on {dev}" + _failed_where(st, fw, op, name, dev)
                            for fw, op, name, dev in per[~per].index)
        unproven = per & cut
        s.p(f"{int((per & ~cut).sum())} of {len(per)} checked ops and strategies (each framework and device apart) "
            "are proven exact against the float64 reference"
            + ("" if per.all() else " — FAILING: " + failing)
            + ("" if not unproven.any() else
               f" — INCOMPLETE, never exact: {int(unproven.sum())} whose check was cut off before their family was "
               f"done ({', '.join(cut_off(check))}; run `varlen check` for them again, `--strategy S` for only some "
               "of them)") + ".")
        verdicts = check[check["kind"].isin(["idiom", "native"])]
        verdicts = verdicts[judged_rows(verdicts)]  # information-only records never count
        wrong = verdicts[~verdicts["equivalent"].astype(bool)]
        lines = []
        for (kind, op, name), g in wrong.groupby(["kind", "op", "name"]):
            fws = ", ".join(sorted(set(g["framework"])))
            every = verdicts[(verdicts["kind"] == kind) & (verdicts["op"] == op) & (verdicts["name"] == name)]
            places = where_labels(every)
            where = _places(places.loc[g.index], places)  # the cases it is wrong on
            errors = g["error"] if "error" in g else pd.Series(False, index=g.index)
            raised = g[errors.map(lambda e: isinstance(e, str) and bool(e))]
            quiet = g.drop(raised.index)
            qs = sorted(set(quiet["quantity"]))
            own = {q: _places(places.loc[quiet.index[quiet["quantity"] == q]], places) for q in qs}
            # where the quantities are wrong on different cases, each says its own (a plain RNN run over the
            # padding: h_n is wrong on both sides, the outputs only with left padding)
            named = [", ".join(qs)] if len(set(own.values())) <= 1 else [f"{q} ({own[q]})" for q in qs]
            what = (named if qs else []) + sorted({"raises " + error_head(e).split(":")[0] for e in raised["error"]})
            lines.append({"kind": "recipe" if kind == "idiom" else "native behaviour", "family": op, "name": name,
                          "wrong in": fws, "wrong": "; ".join(what), "on": where})
        if lines:
            s.p(f"{len(lines)} recipes and native behaviours are wrong somewhere (details in their sections):")
            s.table(pd.DataFrame(lines), fold=False)
    if s.blocks:
        return s
    measured = ok(df)
    unchecked = measured[measured["op"].isin(recommended_ops())]
    if not unchecked.empty:
        s.p(f"{len(unchecked)} benchmark case(s) of ops with strategies measured, but none of their strategies was "
            "checked on its device: nothing is recommended before `varlen check` has proven it exact there "
            "('Recommendation' lists them).")
    elif not measured.empty:
        s.p(f"{len(measured)} benchmark case(s) measured, all of ops without strategies to recommend (see "
            "'Throughput vs length skew and batch size').")
    else:
        s.p("Nothing measured or checked yet.")
    return s


def rebased(r) -> bool:
    """Whether a recommendation row's padded baseline is not the sweep's fastest strategy on equal lengths (one
    timed side by side against it there was faster): its sweep and side-by-side figures then divide different
    times."""
    return bool(r.get("padded baseline")) and r.get("padded baseline") != r.get("sweep's fastest padded")


def _fresh(r) -> str:
    """A recommendation row's "; new batches compiled <n> shapes over <k>", or "" where they compiled nothing."""
    return f"; new batches compiled {r['new batches compiled']}" if r["new batches compiled"] else ""


def _ideal_text(ideal: float, fraction: float) -> str:
    """", <fraction> of the ideal <ideal>x" of a recommendation row; what stands there when a part is missing (no
    padded baseline: no fraction; a profile without one valid token: no ideal)."""
    if pd.isna(ideal):
        return ""
    if np.isinf(ideal):
        return ", no valid token: no ideal"
    return f", {fraction:.2f} of the ideal {ideal:.1f}x" if pd.notna(fraction) else f", the ideal {ideal:.1f}x"


def _other_ops(rec: pd.DataFrame) -> pd.DataFrame:
    """One row per (op, configuration, device, profile) with padding, one column per framework: "<strategy> <x>x
    (<fraction> of the ideal <ideal>x)", x its speedup over its own padded baseline, side by side where timed so
    (marked so), else across the sweep, and the fraction that x over the ideal x; and the framework whose strategy
    took the least time."""
    rec = rec[rec["profile"] != "equal"]
    if rec.empty:
        return pd.DataFrame()
    cfg = [c for c in CONFIG if c in rec.columns]
    rows = []
    for key, g in rec.groupby(["op", *cfg, "device", "shape", "profile"], dropna=False, sort=False):
        conf = ", ".join(f"{k} {v}" for k, v in zip(cfg, key[1:-3], strict=True) if pd.notna(v) and v != "-")
        row = {"op": key[0] + (f" ({conf})" if conf else ""), "device": key[-3], "shape": key[-2],
               "lengths": f"{key[-1]} ({g['padding'].iloc[0]:.0%} padding)"}
        for _, r in g.sort_values("framework").iterrows():
            paired = pd.notna(r["x side by side"])
            x = r["x side by side"] if paired else r["x vs padded baseline"]
            ideal = (f" ({r['fraction of ideal']:.2f} of the ideal {r['ideal x']:.1f}x)"
                     if pd.notna(r["ideal x"]) and pd.notna(r["fraction of ideal"]) else "")
            row[r["framework"]] = (f"{r['fastest exact strategy']} [{r['kernel']}] {x:.2f}x"
                                   f"{' side by side' if paired else ''}{ideal}"
                                   f"{_fresh(r)}")
        best = g[g["overall best"].astype(bool)]["framework"]
        row["fastest in time"] = ", ".join(best) if len(best) else "-"
        rows.append(row)
    return pd.DataFrame(rows).fillna("-")


def _coverage(df: pd.DataFrame, title: str, device: str, conf: dict, profile: str) -> str:
    """What a summary line's figures leave out, as " Timed on <device> at <commits> (the newest results: <commit>);
    not timed there: <framework> <strategies>; ...": the commits of this device's records when none is the newest
    record's (records committed from a lent GPU may predate strategies added since), and for each framework timed
    on this device, its strategies timed at this point (op, configuration but host, profile, each device's own
    headline B and T) on another device but neither timed nor excluded by their precondition on this one. Empty
    when this device's records are current and complete."""
    def at_point(d: pd.DataFrame) -> pd.DataFrame:
        d = d[d["op"].isin([op for op, t in OP_TITLES.items() if t == title]) & (d["profile"] == profile)]
        for k, v in conf.items():
            if k != "host" and k in d.columns:
                d = d[d[k].isna()] if pd.isna(v) else d[d[k] == v]
        return d

    measured = ok(df)
    d = at_point(headline(measured))
    newest = measured.sort_values("time")["commit"].dropna() if "commit" in df.columns else pd.Series(dtype=object)
    here = d[d["device"] == device]
    if here.empty or newest.empty:
        return ""
    notes, commits = [], sorted(set(here["commit"].dropna().astype(str)))
    if commits and str(newest.iloc[-1]) not in commits:
        notes.append(f"timed on {device} at {', '.join(commits)} (the newest results: {newest.iloc[-1]})")
    excluded = at_point(df[(df["status"] == "unsupported") & (df["device"] == device)])
    missing = []
    for fw, g in d.groupby("framework", sort=True):
        mine = g[g["device"] == device]
        gone = set(g["strategy"]) - set(mine["strategy"]) - set(excluded[excluded["framework"] == fw]["strategy"])
        if len(mine) and gone:
            missing.append(f"{fw} {', '.join(sorted(gone))}")
    if missing:
        notes.append(f"not timed on {device}: " + "; ".join(missing))
    text = "; ".join(notes)
    return f" {text[0].upper()}{text[1:]}." if text else ""


def _best_policies(df: pd.DataFrame) -> dict:
    ep = ok(df)[ok(df)["op"] == "rnn_epoch"] if not df.empty else df
    out = {}
    for (device, profile, fw), g in ep.groupby(["device", "profile", "framework"]):
        out[(device, profile, fw)] = g.loc[g["first_call_s"].idxmin(), "policy"]
    return out


def _places(bad: pd.Series, every: pd.Series) -> str:
    """The places (`where_labels`) in `bad`, in words: "every case checked" where they are all of `every`'s, else
    the first three and how many more."""
    bad = list(dict.fromkeys(bad))
    if set(bad) == set(every):
        return "every case checked"
    return "; ".join(bad[:3]) + (f"; +{len(bad) - 3} more" if len(bad) > 3 else "")


def _failed_where(check: pd.DataFrame, fw: str, op: str, name: str, device: str) -> str:
    """The note after a failing check cell's name, " (at <commit>: <first error line>)": the commits its failing
    records came from (committed records may predate a fix) and the first error they raised, cut to 100
    characters."""
    bad = check[(check["framework"] == fw) & (check["op"] == op) & (check["name"] == name)
                & (check["device"] == device) & ~check["equivalent"].astype(bool)]
    commits = sorted({str(c) for c in bad.get("commit", pd.Series(dtype=object)).dropna()})
    errors = [str(e).splitlines()[0] for e in bad.get("error", pd.Series(dtype=object)).dropna() if str(e).strip()]
    cut = [e if len(e) <= 100 else e[:100].rstrip() + "..." for e in errors[:1]]
    what = ([f"at {', '.join(commits)}"] if commits else []) + cut
    return f" ({': '.join(what)})" if what else ""
