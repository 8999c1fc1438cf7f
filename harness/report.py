"""`varlen report`: tidy records -> one HTML page + the same content as Markdown.

Report code only groups, pivots and plots (pandas + matplotlib's object API); every section is one function that
returns a `Section` of Markdown/HTML blocks, so both outputs always hold the same content.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.idioms import IDIOMS


# -- small rendering helpers ----------------------------------------------------------------------------------
@dataclass
class Section:
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)  # ("p"|"table"|"figure"|"html", payload)

    def p(self, text: str) -> Section:
        self.blocks.append(("p", text))
        return self

    def table(self, df: pd.DataFrame, fail_col: str | None = None) -> Section:
        self.blocks.append(("table", (df, fail_col)))
        return self

    def figure(self, path: str, caption: str) -> Section:
        self.blocks.append(("figure", (path, caption)))
        return self


def fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf"
        return f"{v:.3g}"
    return str(v)


def md_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def html_table(df: pd.DataFrame, fail_col: str | None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for row in df.itertuples(index=False):
        bad = fail_col is not None and not bool(getattr(row, fail_col))
        cells = "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row)
        rows.append(f"<tr class=\"{'fail' if bad else ''}\">{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f0f0f0}tr.fail td{background:#ffd6d6;font-weight:bold;color:#900}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:.9em}
.ok{color:#060}.bad{color:#b00;font-weight:bold}nav a{margin-right:1em}"""


# Marks on <body> how many figures actually loaded (a browser test reads it; a reader never sees it).
LOAD_CHECK = ("window.addEventListener('load',function(){var i=document.images,n=0;for(var k=0;k<i.length;k++)"
              "{if(i[k].complete&&i[k].naturalWidth>0)n++;}document.body.dataset.imagesLoaded=n;"
              "document.body.dataset.imagesTotal=i.length;});")


def render(sections: list[Section], out: Path, title: str) -> None:
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>",
            "<nav>" + "".join(f'<a href="#s{i}">{html.escape(s.title)}</a>' for i, s in enumerate(sections)) + "</nav>"]
    for i, s in enumerate(sections):
        md += [f"## {s.title}", ""]
        body.append(f'<h2 id="s{i}">{html.escape(s.title)}</h2>')
        for kind, payload in s.blocks:
            if kind == "p":
                md += [payload, ""]
                body.append(f"<p>{html.escape(payload)}</p>")
            elif kind == "table":
                df, fail_col = payload
                md += [md_table(df), ""]
                body.append(html_table(df, fail_col))
            elif kind == "link":
                href, text = payload
                md += [f"[{text}]({href})", ""]
                body.append(f'<p><a href="{html.escape(href)}">{html.escape(text)}</a></p>')
            elif kind == "figure":
                path, caption = payload
                md += [f"![{caption}]({path})", "", f"*{caption}*", ""]
                body.append(f'<figure><img src="{html.escape(path)}" alt="{html.escape(caption)}">'
                            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(md))
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}<script>{LOAD_CHECK}</script></body></html>")
    (out / "index.html").write_text(page)


# -- check sections -------------------------------------------------------------------------------------------
def _frame(records: list[dict], source: str) -> pd.DataFrame:
    df = pd.DataFrame([r for r in records if r.get("source", "check") == source])
    return df


def equivalence_table(check: pd.DataFrame) -> pd.DataFrame:
    """framework x kind x name x dtype: cells checked, cells failed, worst error."""
    df = check[check["kind"].isin(["op", "strategy", "error"])].copy()
    df["dtype"] = df.get("dtype", pd.Series(dtype=str)).fillna("")
    df["kernel"] = df.get("kernel", pd.Series(dtype=str)).fillna("")
    g = df.groupby(["framework", "kind", "name", "dtype"], sort=True)
    out = g.agg(cells=("equivalent", "size"), failed=("equivalent", lambda s: int((~s.astype(bool)).sum())),
                max_abs_err=("max_abs_err", "max"),
                kernel=("kernel", lambda s: ", ".join(sorted({k for k in s if k})))).reset_index()
    out["all_equivalent"] = out["failed"] == 0
    return out


def failures_table(check: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in ("framework", "kind", "name", "case", "cell", "side", "bidirectional", "dtype", "quantity",
                        "max_abs_err", "kernel", "error") if c in check.columns]
    bad = check[check["kind"].isin(["op", "strategy", "error"]) & ~check["equivalent"].astype(bool)]
    return bad[cols]


def idiom_table(check: pd.DataFrame) -> pd.DataFrame:
    """framework x idiom x side x direction: which quantities are right, and the worst error of the wrong ones."""
    df = check[check["kind"] == "idiom"].copy()
    if df.empty:
        return df
    df["direction"] = df["bidirectional"].map({True: "bi", False: "uni"})
    rows = []
    for (fw, name, side, direction), g in df.groupby(["framework", "name", "side", "direction"], sort=True):
        # a quantity is correct only if it is correct for every cell tried (LSTM and GRU)
        right = set(g.groupby("quantity")["equivalent"].all().loc[lambda s: s].index)
        wrong = g[~g["equivalent"].astype(bool)]
        rows.append({"framework": fw, "recipe": name, "side": side, "direction": direction,
                     "correct": ", ".join(q for q in ("outputs", "h_n", "grads") if q in right) or "nothing",
                     "wrong": ", ".join(q for q in ("outputs", "h_n", "grads") if q in set(wrong["quantity"]))
                     or "-",
                     "max_abs_err": float(wrong["max_abs_err"].max()) if len(wrong) else 0.0,
                     "caught": len(wrong) > 0})
    return pd.DataFrame(rows)


def idiom_matrix(check: pd.DataFrame) -> pd.DataFrame:
    """recipe x side x direction rows, one column per framework: what the recipe gets wrong there (or 'exact')."""
    t = idiom_table(check)
    if t.empty:
        return t
    t["verdict"] = [f"WRONG {w} (err {fmt(e)}); right: {c}" if caught else "exact here"
                    for w, e, c, caught in zip(t["wrong"], t["max_abs_err"], t["correct"], t["caught"])]
    m = t.pivot_table(index=["recipe", "side", "direction"], columns="framework", values="verdict",
                      aggfunc="first").reset_index()
    m.columns.name = None
    return m


def check_sections(check: pd.DataFrame) -> list[Section]:
    eq = equivalence_table(check)
    n_bad = int((~eq["all_equivalent"]).sum())
    s = Section("Equivalence matrix")
    s.p("Every framework's ops and RNN strategies against the NumPy float64 reference (outputs, final states, "
        "input and weight gradients; NaN in padding; a zero-length row). "
        + ("All cells are equivalent." if n_bad == 0 else f"{n_bad} rows have FAILING cells (red)."))
    s.table(eq, fail_col="all_equivalent")
    fails = failures_table(check)
    if len(fails):
        s.p("Failing cells:").table(fails.assign(equivalent=False), fail_col="equivalent")
    r = Section("The recipes people copy")
    ids = idiom_matrix(check)
    if len(ids):
        r.p("Each recipe run for real in each framework (LSTM and GRU, float64, one real all-zero step) and compared "
            "with the masked reference: per framework, the quantities it gets WRONG (valid outputs, final state "
            "h_n, gradients) with the worst error, and those it gets right; 'exact here' where the recipe is "
            "honestly correct.")
        for name, why in IDIOMS.items():
            r.p(f"{name}: {why}")
        r.table(ids)
    return [s, r]


def check_summary_text(records: list[dict]) -> str:
    check = _frame(records, "check")
    if check.empty:
        return "no check records"
    lines = [md_table(equivalence_table(check))]
    fails = failures_table(check)
    if len(fails):
        lines += ["", "FAILING cells:", md_table(fails)]
    ids = idiom_matrix(check)
    if len(ids):
        lines += ["", "Recipes (idioms):", md_table(ids)]
    return "\n".join(lines)


def build(records: list[dict], out: str | Path, *, title: str = "varlen comparison report",
          asv_html: Path | None = None) -> Path:
    out = Path(out)
    check = _frame(records, "check")
    df = bench_frame(records)
    sections = [setup_section(records, df)]
    if not df.empty:
        sections.append(recommendation_section(df, check))
    if not check.empty:
        sections += check_sections(check)
    if not df.empty:
        sections += [throughput_section(df, out), memory_section(df, out), compile_section(df, out),
                     floor_section(df, records, out), overhead_section(records), failed_section(df)]
    sections.append(asv_section(out, asv_html))
    render(sections, out, title)
    return out / "index.html"


def overhead_section(records: list[dict]) -> Section:
    s = Section("Adapter overhead")
    ov = pd.DataFrame([r for r in records if r.get("source") == "overhead"])
    if ov.empty:
        return s.p("Not measured (it runs with `varlen bench --quick`).")
    s.p("The adapter's default strategy (validation, conversion, zero-length and left-padding handling included) "
        "against the same framework code written directly, interleaved in one process; ratio of medians "
        "(1.00 = no overhead). Frameworks without a raw baseline are not listed.")
    cols = ["framework", "strategy", "cell", "batch", "max_len", "hidden", "profile", "raw_median_s",
            "adapter_median_s", "overhead_ratio"]
    return s.table(ov[cols].round(5))


def failed_section(df: pd.DataFrame) -> Section:
    s = Section("Failed benchmark cases")
    bad = df[df["status"] != "ok"] if "status" in df.columns else df.iloc[:0]
    if bad.empty:
        return s.p("None: every case of the sweep was measured.")
    return s.table(bad[["framework", "op", "strategy", "device", "batch", "max_len", "profile", "error"]]
                   .assign(ok=False), fail_col="ok")


def setup_section(records: list[dict], bench: pd.DataFrame) -> Section:
    s = Section("Setup")
    df = pd.DataFrame(records)
    if df.empty:
        return s.p("No records.")
    cols = [c for c in ("host", "cpu", "cores", "python", "platform", "commit") if c in df.columns]
    s.p("Machines and commits the results come from:")
    s.table(df[cols].dropna(subset=["host"]).drop_duplicates().reset_index(drop=True))
    if "version" in df.columns:
        fw = df.dropna(subset=["framework", "version"])
        devices = (bench.groupby("framework")["device"].agg(lambda d: ", ".join(sorted(set(d))))
                   if not bench.empty else pd.Series(dtype=str))
        t = fw[["framework", "version"]].drop_duplicates().sort_values("framework").reset_index(drop=True)
        t["devices benchmarked"] = t["framework"].map(devices).fillna("-")
        s.table(t)
    fl = setup_floor_rows(records)
    if not fl.empty:
        s.p("Floors measured in the same run (NumPy: large array copy counting bytes read + written; 2048^3 "
            "float32 matrix product):")
        s.table(fl)
    return s


# -- bench sections -------------------------------------------------------------------------------------------
OP_TITLES = {"pad": "pad", "mask": "mask", "pack_unpack": "pack + unpack", "masked_mean": "masked mean",
             "rnn_forward": "RNN forward", "rnn_forward_backward": "RNN forward + backward"}


def bench_frame(records: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame([r for r in records if r.get("source") == "bench"])
    if df.empty:
        return df
    df["impl"] = df["framework"] + ":" + df["strategy"].astype(str)
    return df


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df.columns else df


def _new_fig(ncols: int, nrows: int = 1, w: float = 5.2, h: float = 3.8):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.ravel()


def _save(fig, out: Path, name: str) -> str:
    (out / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "figures" / name, dpi=110)
    return f"figures/{name}"


def _plain_log_x(ax, values) -> None:
    """Log x-axis labelled with the measured values themselves (no overlapping 3x10^1-style minor labels)."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(values))))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())


def _legend_below(ax) -> None:
    """Legend under the axes, so it never hides a curve."""
    ax.legend(fontsize=7, title="framework:strategy", title_fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)


def _errbar(ax, g: pd.DataFrame, x: str, label: str) -> None:
    g = g.sort_values(x)
    y = g["valid_tokens"] / g["median_s"]
    lo = y - g["valid_tokens"] / g["p75_s"]
    hi = g["valid_tokens"] / g["p25_s"] - y
    ax.errorbar(g[x], y, yerr=[lo.clip(lower=0), hi.clip(lower=0)], marker="o", capsize=3, label=label)


def _headline(df: pd.DataFrame) -> pd.DataFrame:
    """The quick grid's common point: the most frequent (batch, max_len) per op."""
    if df.empty:
        return df
    B = df["batch"].mode().iloc[0]
    T = df["max_len"].mode().iloc[0]
    return df[(df["batch"] == B) & (df["max_len"] == T)]


def throughput_section(df: pd.DataFrame, out: Path) -> Section:
    s = Section("Throughput vs length skew and batch size")
    ok = _ok(df)
    for device, d in ok.groupby("device"):
        head = _headline(d)
        ops = [op for op in OP_TITLES if op in set(head["op"])]
        if ops:
            fig, axes = _new_fig(3, (len(ops) + 2) // 3, h=5.2)
            for ax, op in zip(axes, ops):
                for impl, g in head[head["op"] == op].groupby("impl"):
                    _errbar(ax, g, "padding_fraction", impl)
                ax.set(title=f"{OP_TITLES[op]} ({device}, B={head['batch'].iloc[0]}, T={head['max_len'].iloc[0]})",
                       xlabel="padding fraction (share of padded steps)", ylabel="valid tokens / s", yscale="log")
                _legend_below(ax)
            for ax in axes[len(ops):]:
                ax.set_axis_off()
            s.figure(_save(fig, out, f"throughput_skew_{device}.png"),
                     f"Valid tokens per second vs padding fraction ({device}); each point is one length profile "
                     "(equal has 0 padding; zipf the most); error bars span the quartiles of the repeats.")
        by_batch = d[d.groupby(["op", "max_len", "profile"])["batch"].transform("nunique") > 1]
        if not by_batch.empty:
            ops = [op for op in OP_TITLES if op in set(by_batch["op"])]
            fig, axes = _new_fig(len(ops), h=5.2)
            for ax, op in zip(axes, ops):
                g_op = by_batch[by_batch["op"] == op]
                for impl, g in g_op.groupby("impl"):
                    _errbar(ax, g, "batch", impl)
                prof, T = g_op["profile"].iloc[0], g_op["max_len"].iloc[0]
                ax.set(title=f"{OP_TITLES[op]} ({device}, {prof}, T={T})", xlabel="batch size (sequences)",
                       ylabel="valid tokens / s", yscale="log")
                _plain_log_x(ax, g_op["batch"])
                _legend_below(ax)
            s.figure(_save(fig, out, f"throughput_batch_{device}.png"),
                     f"Valid tokens per second vs batch size ({device}); error bars span the quartiles.")
    return s


def memory_section(df: pd.DataFrame, out: Path) -> Section:
    s = Section("Memory")
    ok = _ok(df).copy()
    if "peak_bytes" not in ok.columns:
        ok["peak_bytes"] = ok["device_peak_bytes"].where(ok["device"] != "cpu", ok["peak_rss_bytes"])
    ok = ok.dropna(subset=["peak_bytes"])
    s.p("Peak bytes of one call above what the inputs already hold: on CPU the process's peak RSS above its RSS "
        "just before the call (high-water mark reset per case), on GPU the framework allocator's peak. Allocator "
        "caches make small CPU figures noisy (a few MB); differences between strategies are what matters.")
    rnn = ok[ok["op"] == "rnn_forward_backward"]
    panels = [("batch", "max_len"), ("max_len", "batch")]
    fig, axes = _new_fig(2, h=5.2)
    drawn = False
    for ax, (x, fixed) in zip(axes, panels):
        for (impl, device), g in rnn.groupby(["impl", "device"]):
            g = g[g["profile"] == "lognormal"]
            g = g[g[fixed] == g[fixed].mode().iloc[0]] if len(g) else g
            if g[x].nunique() > 1:
                g = g.sort_values(x)
                ax.plot(g[x], g["peak_bytes"] / 2**20, marker="o", label=f"{impl} ({device})")
                drawn = True
        ax.set(title=f"RNN fwd+bwd peak memory vs {x.replace('_', ' ')} (lognormal)",
               xlabel="batch size (sequences)" if x == "batch" else "max length T (steps)",
               ylabel="peak MiB above the RSS before the call")
        _plain_log_x(ax, rnn[x])
        if ax.get_legend_handles_labels()[0]:
            _legend_below(ax)
    if drawn:
        s.figure(_save(fig, out, "memory.png"), "Peak memory of one RNN forward+backward call vs batch size and "
                 "max length.")
    if ok.empty:
        return s.p("No memory figures were measured.")
    profile = "lognormal" if (ok["profile"] == "lognormal").any() else ok["profile"].mode().iloc[0]
    head = _headline(ok[ok["profile"] == profile])
    s.p(f"Peak MiB per op at B={head['batch'].iloc[0]}, T={head['max_len'].iloc[0]}, {profile} lengths:")
    is_rnn = head["op"].str.startswith("rnn")
    for part, index in ((head[~is_rnn], ["device", "framework"]), (head[is_rnn], ["device", "impl"])):
        if part.empty:
            continue
        t = part.pivot_table(index=index, columns="op", values="peak_bytes", aggfunc="median").div(2**20).round(2)
        t.columns = [f"{OP_TITLES.get(c, c)} (MiB)" for c in t.columns]
        s.table(t.reset_index())
    return s


def compile_section(df: pd.DataFrame, out: Path) -> Section:
    s = Section("Compile time")
    rnn = _ok(df)[_ok(df)["op"].isin(["rnn_forward", "rnn_forward_backward"])]
    if rnn.empty:
        return s.p("No RNN results.")
    t = rnn.groupby(["device", "op", "impl"])["compile_s"].median().reset_index()
    s.p("First call minus a warm call, for the case's shape (jax.jit / tf.function trace and compile; eager "
        "strategies show ~0). Compiled once per shape: new length values never retrace (checked in every timed "
        "region).")
    fig, axes = _new_fig(2)
    for ax, (op, g) in zip(axes, t.groupby("op")):
        g = g.sort_values("impl")
        labels = g["impl"] + " (" + g["device"] + ")"
        ax.barh(labels, g["compile_s"])
        ax.set(title=f"{OP_TITLES[op]}", xlabel="compile seconds (median over cases)")
    s.figure(_save(fig, out, "compile.png"), "Compile (trace) seconds per framework and strategy.")
    return s.table(t.round(3))


def floor_section(df: pd.DataFrame, records: list[dict], out: Path) -> Section:
    s = Section("Fraction of the machine's floor")
    ok = _ok(df).dropna(subset=["fraction_of_floor"])
    if ok.empty:
        return s.p("No floors measured.")
    head = _headline(ok)
    best = (head.sort_values("median_s").groupby(["device", "op", "framework", "profile"]).head(1)
            .groupby(["device", "op", "framework"]).apply(lambda g: g.loc[g["fraction_of_floor"].idxmax()],
                                                          include_groups=False).reset_index())
    best = best[["device", "op", "framework", "strategy", "profile", "fraction_of_floor", "floor", "kernel"]]
    s.p("Floor time = ideal bytes / measured copy bandwidth (pad, mask, pack, mean) or matrix-product FLOPs on valid "
        "tokens / measured float32 GEMM rate (RNNs); fraction = floor time / measured time, for the best strategy "
        "of each framework (its best profile). 1.0 = NumPy's BLAS rate / bandwidth on this machine, measured in "
        "the same run; a fused framework kernel (e.g. oneDNN's LSTM) can go beyond NumPy's GEMM and so above 1.")
    fig, axes = _new_fig(1, w=9)
    ax = axes[0]
    labels = best["op"].map(OP_TITLES) + " / " + best["framework"] + " (" + best["device"] + ")"
    ax.barh(labels, best["fraction_of_floor"])
    ax.set(xscale="log", xlabel="fraction of floor (log)", title="Best strategy per framework and op")
    s.figure(_save(fig, out, "floor.png"), "Fraction of the copy-bandwidth / GEMM floor reached.")
    return s.table(best.round(4))


def recommendation_table(df: pd.DataFrame, check: pd.DataFrame) -> pd.DataFrame:
    """Per op x device x profile: the fastest exact strategy per framework and overall, vs the padded baseline.

    Padded baseline = the same framework's fastest strategy on the fully padded batch (the `equal` profile at the
    same B and T): the cost of ignoring the lengths. Only strategies that passed every check cell count as exact.
    """
    ok = _head_rnn(_ok(df))
    if ok.empty:
        return ok
    exact = None
    if not check.empty and "name" in check.columns:
        st = check[check["kind"] == "strategy"]
        exact = set(st.groupby(["framework", "name"])["equivalent"].all().loc[lambda s: s].index)
        ok = ok[[(f, s) in exact for f, s in zip(ok["framework"], ok["strategy"])]]
    rows = []
    for (op, device, _, _), d in ok.groupby(["op", "device", "batch", "max_len"]):
        base = d[d["profile"] == "equal"].groupby("framework")["median_s"].min()
        for profile, g in d.groupby("profile"):
            fastest = g.loc[g.groupby("framework")["median_s"].idxmin()]
            winner = fastest.loc[fastest["median_s"].idxmin()]
            for _, r in fastest.iterrows():
                rows.append({"op": OP_TITLES[op], "device": device, "profile": profile,
                             "padding": round(float(r["padding_fraction"]), 2), "framework": r["framework"],
                             "fastest exact strategy": r["strategy"], "kernel": r["kernel"],
                             "valid Mtok/s": round(r["valid_tokens_per_s"] / 1e6, 3),
                             "x vs padded baseline": round(base.get(r["framework"], float("nan")) / r["median_s"], 2),
                             "overall best": r["framework"] == winner["framework"]})
    return pd.DataFrame(rows)


def _head_rnn(df: pd.DataFrame) -> pd.DataFrame:
    rnn = df[df["op"].isin(["rnn_forward", "rnn_forward_backward"])]
    return _headline(rnn) if not rnn.empty else rnn


def recommendation_section(df: pd.DataFrame, check: pd.DataFrame) -> Section:
    s = Section("Recommendation")
    t = recommendation_table(df, check)
    if t.empty:
        return s.p("No RNN benchmark results.")
    s.p("For each length profile and device: the fastest strategy of each framework that passed every equivalence "
        "cell, and the overall winner. 'x vs padded baseline' = time of that framework's fastest strategy on the "
        "fully padded batch (profile equal, same B and T: what ignoring the lengths costs) over this time.")
    return s.table(t)


def setup_floor_rows(records: list[dict]) -> pd.DataFrame:
    fl = pd.DataFrame([r for r in records if r.get("source") == "floors"])
    if fl.empty:
        return fl
    fl["copy GB/s"] = (fl["copy_bytes_per_s"] / 1e9).round(2)
    fl["GEMM GFLOP/s (float32)"] = (fl["gemm_flop_per_s"] / 1e9).round(1)
    fl["date"] = pd.to_datetime(fl["time"], unit="s").dt.strftime("%Y-%m-%d %H:%M UTC")
    return fl[["host", "date", "copy GB/s", "GEMM GFLOP/s (float32)"]]


def asv_section(out: Path, asv_html: Path | None) -> Section:
    s = Section("asv dashboard")
    if asv_html is not None and (asv_html / "index.html").exists():
        import os

        rel = os.path.relpath(asv_html / "index.html", out)
        s.blocks.append(("link", (rel, "Open the asv dashboard")))
        return s.p("Published with `asv publish`; `asv preview` serves it over HTTP (some browsers refuse its "
                   "data files from file://).")
    return s.p("Not published yet: run `make asv` (asv run + asv publish), then rebuild this report.")
