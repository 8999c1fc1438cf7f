"""`varlen report`: tidy records -> one HTML page + the same content as Markdown.

Split by concern: `tables.py` shapes records with pandas, `figures.py` holds matplotlib helpers, `sections.py`
builds one `Section` per topic, `render.py` writes HTML and Markdown. Each op family adds its own sections
(`report_sections` of `harness/families/<family>.py`). The report reads only schema fields (`harness.records`)
and says what it did not see: unreadable lines, frameworks benchmarked but never checked.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness import results
from harness.families import FAMILIES, strategy_ops
from harness.report import sections as S
from harness.report.render import Section, md_table, render
from harness.report.tables import (
    bench_frame,
    bench_status,
    check_frame,
    cut_off,
    equivalence_table,
    failures_table,
    frame,
    recommendation_table,
    verdict_matrix,
)

__all__ = ["bench_frame", "build", "check_summary_text", "equivalence_table", "frame", "recommendation_table"]


def check_sections(check: pd.DataFrame, bench: pd.DataFrame) -> list[Section]:
    s = Section("Equivalence matrix")
    if check.empty:
        s.p("No check records: every benchmarked strategy is unchecked (run `varlen check`).")
        return [s]
    eq = equivalence_table(check)
    n_bad, n_cut = int((~eq["all_equivalent"]).sum()), int((eq["all_equivalent"] & ~eq["complete"]).sum())
    found = ([f"{n_bad} {'row has' if n_bad == 1 else 'rows have'} FAILING cells (red)."] if n_bad else []) + (
        [f"{n_cut} {'row is' if n_cut == 1 else 'rows are'} INCOMPLETE (red): their check was cut off before the "
         f"family was done ({', '.join(cut_off(check))}), so the cells they hold prove nothing; run `varlen check` "
         "for them again (`--strategy S`: only some of them, to the end)."] if n_cut else [])
    s.p("Every framework's ops and strategies against the NumPy float64 reference (outputs, final states, "
        "input and weight gradients; NaN in padding; zero-length rows; float32 and float64), per device. "
        + (" ".join(found) or "All cells are equivalent."))
    s.table(eq, fail_col="proven_exact")
    fails = failures_table(check)
    if len(fails):
        s.p("Failing cells:").table(fails.assign(equivalent=False), fail_col="equivalent")
    strat = bench[bench["op"].isin(strategy_ops()) & (bench["status"] == "ok")] if not bench.empty else bench
    unchecked = sorted({f"{f}:{st} ({d})" for f, st, d, v in zip(strat["framework"], strat["strategy"],
                                                                 strat["device"], bench_status(strat, check))
                        if v == "unchecked"})
    if unchecked:
        s.p("Benchmarked but never checked on that device (unchecked: never recommended as exact there): "
            + ", ".join(unchecked))
    return [s]


def problems_section(problems: list) -> Section:
    s = Section("Records that could not be read")
    s.p(f"{len(problems)} line(s) or file(s) of the inputs are not valid records and were left out:")
    return s.table(pd.DataFrame([{"file": p.path, "line": p.line, "why": p.why} for p in problems[:200]]))


def check_summary_text(records: list[dict]) -> str:
    check = check_frame(records)
    if check.empty:
        return "no check records"
    lines = [md_table(equivalence_table(check))]
    fails = failures_table(check)
    if len(fails):
        lines += ["", "FAILING cells:", md_table(fails)]
    for fam in FAMILIES.values():
        summary = getattr(fam, "summary_table", None)
        table = summary(check) if summary else None
        if table is not None and len(table):
            lines += ["", f"{fam.NAME}: recipes:", md_table(table)]
    rest = verdict_matrix(check, [op for op in set(check["op"]) if op != "rnn"])
    if len(rest):
        lines += ["", "Recipes and native behaviours (other families):", md_table(rest)]
    return "\n".join(lines)


def build(records: list[dict], out: str | Path, *, title: str = "varlen comparison report",
          asv_html: Path | None = None, problems: list | None = None, run: str | None = None) -> tuple[Path, bool]:
    """Write the report; returns (index.html, whether it had anything measured or checked to show)."""
    out = Path(out)
    records = results.select(records, run=run)
    check, df = check_frame(records), bench_frame(records)
    measured = not df.empty and (df["status"] == "ok").any()
    paired = frame(records, "paired")
    sections = [S.summary_section(check, df, paired), S.setup_section(records, df)]
    if problems:
        sections.append(problems_section(problems))
    if not measured and check.empty:
        sections.append(Section("Nothing to report").p(
            "No valid check record and no measured benchmark case in the inputs"
            + (" (every benchmark case failed: see below)." if not df.empty else ".")
            + " Run `varlen check` and `varlen bench`, then rebuild this report."))
    if measured:
        sections += [S.recommendation_section(df, check, paired), S.paired_section(records)]
    sections += check_sections(check, df)
    for fam in FAMILIES.values():
        extra = getattr(fam, "report_sections", None)
        if extra is not None:
            sections += extra(check, df, out)
    if measured:
        sections += [S.throughput_section(df, out, check), S.memory_section(df, out, check),
                     S.compile_section(df, out), S.floor_section(df, records, out, check), S.overhead_section(records)]
    if not df.empty:
        sections.append(S.failed_section(df))
    sections.append(S.asv_section(out, asv_html))
    render(sections, out, title)
    return out / "index.html", bool(measured or not check.empty)
