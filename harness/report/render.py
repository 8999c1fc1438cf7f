"""Rendering only: a report is a list of `Section`s of blocks, written as one HTML page and one Markdown file
holding the same content."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class Section:
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)  # ("p"|"table"|"figure"|"html", payload)

    def p(self, text: str) -> Section:
        self.blocks.append(("p", text))
        return self

    def table(self, df: pd.DataFrame, fail_col: str | None = None, fold: bool = True) -> Section:
        self.blocks.append(("table", (df, fail_col, fold)))
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


def md_cell(v) -> str:
    """A Markdown table cell: one line whatever the value holds (a traceback's lines joined by <br>, which
    GitHub-flavoured Markdown renders inside a cell), its pipes escaped."""
    return "<br>".join(fmt(v).replace("|", "\\|").splitlines())


def md_table(df: pd.DataFrame) -> str:
    cols = [md_cell(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def verdict_class(text: str) -> str:
    """Colour of a verdict cell: exact (green), wrong (red), unchecked (amber); '' for any other cell."""
    t = text.lower()
    if t.startswith(("wrong", "nan", "raises")):
        return "v-wrong"
    if t.startswith(("exact", "ok")) or t == "all exact":
        return "v-exact"
    if t.startswith("unchecked"):
        return "v-unchecked"
    return ""


def html_table(df: pd.DataFrame, fail_col: str | None, fold: bool = True) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for row in df.itertuples(index=False):
        bad = fail_col is not None and not bool(getattr(row, fail_col))
        cells = "".join(f'<td class="{verdict_class(fmt(v))}">{html.escape(fmt(v))}</td>' for v in row)
        rows.append(f"<tr class=\"{'fail' if bad else ''}\">{cells}</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    if fold and len(df) > FOLD_ROWS:  # long tables fold away: the page opens on what a reader acts on
        return f"<details><summary>{len(df)} rows (click to show)</summary>{table}</details>"
    return table


FOLD_ROWS = 14


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f0f0f0}tr.fail td{background:#ffd6d6;font-weight:bold;color:#900}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:.9em}
.ok{color:#060}.bad{color:#b00;font-weight:bold}nav a{margin-right:1em}
td.v-exact{background:#e3f6e3;color:#064}td.v-wrong{background:#fde2e2;color:#a00}td.v-unchecked{background:#fff3cd}
details{margin:1em 0}summary{cursor:pointer;color:#246}.summary li{margin:.3em 0}"""


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
                df, fail_col, fold = payload
                md += [md_table(df), ""]
                body.append(html_table(df, fail_col, fold))
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


