"""`varlen report`: tidy records -> one HTML page + the same content as Markdown.

Report code only groups, pivots and plots (pandas + matplotlib's object API); every section is one function that
returns a `Section` of Markdown/HTML blocks, so both outputs always hold the same content.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

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
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
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
            elif kind == "figure":
                path, caption = payload
                md += [f"![{caption}]({path})", "", f"*{caption}*", ""]
                body.append(f'<figure><img src="{html.escape(path)}" alt="{html.escape(caption)}">'
                            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(md))
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
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
        right = sorted(set(g.loc[g["equivalent"].astype(bool), "quantity"]))
        wrong = g[~g["equivalent"].astype(bool)]
        rows.append({"framework": fw, "recipe": name, "side": side, "direction": direction,
                     "correct": ", ".join(q for q in ("outputs", "h_n", "grads") if q in right) or "nothing",
                     "wrong": ", ".join(q for q in ("outputs", "h_n", "grads") if q in set(wrong["quantity"]))
                     or "-",
                     "max_abs_err": float(wrong["max_abs_err"].max()) if len(wrong) else 0.0,
                     "caught": len(wrong) > 0})
    return pd.DataFrame(rows)


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
    ids = idiom_table(check)
    if len(ids):
        r.p("Each recipe run for real in each framework (LSTM and GRU, float64) and compared with the masked "
            "reference: 'correct' lists the quantities it gets right, 'wrong' those it gets wrong. "
            "A recipe is caught when anything is wrong.")
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
    ids = idiom_table(check)
    if len(ids):
        lines += ["", "Recipes (idioms):", md_table(ids)]
    return "\n".join(lines)


def build(records: list[dict], out: str | Path, *, title: str = "varlen comparison report") -> Path:
    out = Path(out)
    check = _frame(records, "check")
    sections = [setup_section(records)]
    if not check.empty:
        sections += check_sections(check)
    render(sections, out, title)
    return out / "index.html"


def setup_section(records: list[dict]) -> Section:
    s = Section("Setup")
    df = pd.DataFrame(records)
    if df.empty:
        return s.p("No records.")
    cols = [c for c in ("host", "cpu", "cores", "python", "commit") if c in df.columns]
    s.table(df[cols].drop_duplicates().reset_index(drop=True))
    if "framework" in df.columns and "version" in df.columns:
        s.table(df[["framework", "version"]].dropna().drop_duplicates().sort_values("framework"))
    return s
