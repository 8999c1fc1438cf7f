"""Make a published asv dashboard self-contained, so it renders on a machine with no network.

asv 0.6's `index.html` loads jQuery, flot (and plugins), stupidtable, blueimp-md5 and Bootstrap from public CDNs;
on an offline GPU cluster those loads fail and the page shows nothing. This step rewrites every external
`<script src>` / `<link rel=stylesheet href>` of the published HTML files to a local copy under `<html>/vendor/`,
copied from `node_modules` (installed by `npm ci` from the committed `package.json` + `package-lock.json`, so the
versions are pinned and integrity-checked by npm, and no library blob is committed to git).

An external URL with no known local copy (e.g. a new asv release referencing another library) is an error naming the
URL, and nothing is rewritten: a dashboard that is silently half-offline is worse than a failed build.

    python -m harness.asv_offline results/asv/html [--node-modules node_modules]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR_DIR = "vendor"

_CDNJS = "https://cdnjs.cloudflare.com/ajax/libs"
_JSDELIVR = "https://cdn.jsdelivr.net/npm"
# URL asv references -> (npm package, file inside it). flot 0.8.3 on npm ships unminified files only, and
# stupidtable 1.0.1 is not on npm: stupid-table-plugin 1.1.3 is the same plugin (same `$.fn.stupidtable` API).
LOCAL_COPIES: dict[str, tuple[str, str]] = {
    "https://code.jquery.com/jquery-3.3.1.min.js": ("jquery", "dist/jquery.min.js"),
    f"{_CDNJS}/flot/0.8.3/jquery.flot.min.js": ("flot", "jquery.flot.js"),
    f"{_CDNJS}/flot/0.8.3/jquery.flot.time.min.js": ("flot", "jquery.flot.time.js"),
    f"{_CDNJS}/flot/0.8.3/jquery.flot.selection.min.js": ("flot", "jquery.flot.selection.js"),
    f"{_CDNJS}/flot/0.8.3/jquery.flot.categories.min.js": ("flot", "jquery.flot.categories.js"),
    f"{_JSDELIVR}/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js": ("flot-orderbars", "js/jquery.flot.orderBars.js"),
    f"{_CDNJS}/stupidtable/1.0.1/stupidtable.min.js": ("stupid-table-plugin", "stupidtable.min.js"),
    f"{_CDNJS}/blueimp-md5/2.19.0/js/md5.min.js": ("blueimp-md5", "js/md5.min.js"),
    f"{_JSDELIVR}/bootstrap@3.1.1/dist/js/bootstrap.min.js": ("bootstrap", "dist/js/bootstrap.min.js"),
    f"{_JSDELIVR}/bootstrap@3.1.1/dist/css/bootstrap.min.css": ("bootstrap", "dist/css/bootstrap.min.css"),
}

_TAG = re.compile(r"<(script|link)\b[^>]*>", re.IGNORECASE | re.DOTALL)
_URL_ATTR = re.compile(r"""\b(src|href)\s*=\s*(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
_REL = re.compile(r"""\brel\s*=\s*(["'])(.*?)\1""", re.IGNORECASE | re.DOTALL)
# Subresource integrity hashes name the CDN's bytes (minified builds); the local copy differs, and npm's lockfile
# integrity already vouches for it. crossorigin/referrerpolicy only matter for the CDN fetch.
_CDN_ATTRS = re.compile(r"""\s+(integrity|crossorigin|referrerpolicy)(\s*=\s*(["']).*?\3)?""", re.IGNORECASE)
_CSS_URL = re.compile(r"""url\(\s*(["']?)([^)"']+)\1\s*\)|@import\s+(["'])([^"']+)\3""", re.IGNORECASE)
_LOADED_RELS = {"stylesheet", "icon", "preload", "modulepreload", "manifest"}


class OfflineError(RuntimeError):
    """An external resource the dashboard loads has no local copy (the message names the URLs)."""


@dataclass(frozen=True)
class Ref:
    """One external resource one HTML file loads: the whole tag (to rewrite) and its URL."""

    html: Path
    tag: str
    url: str


def is_external(url: str) -> bool:
    """http(s) and protocol-relative URLs leave the machine; relative paths and data: URIs do not."""
    return bool(re.match(r"^\s*(https?:)?//", url, re.IGNORECASE))


def loaded_url(tag: str) -> str | None:
    """The URL a <script>/<link> tag makes the browser fetch, or None (a <link rel=alternate> fetches nothing)."""
    attr = _URL_ATTR.search(tag)
    if attr is None:
        return None
    if tag[1:5].lower() == "link":
        rel = _REL.search(tag)
        if rel is None or not _LOADED_RELS & set(rel.group(2).lower().split()):
            return None
    return attr.group(3)


def external_refs(html_dir: Path) -> list[Ref]:
    """Every external script/stylesheet the published HTML files load, in file order."""
    refs = []
    for html in sorted(html_dir.rglob("*.html")):
        for m in _TAG.finditer(html.read_text(encoding="utf-8")):
            url = loaded_url(m.group(0))
            if url is not None and is_external(url):
                refs.append(Ref(html, m.group(0), url.strip()))
    return refs


def source_of(url: str, node_modules: Path) -> Path:
    """The installed file standing in for `url`; OfflineError when there is none."""
    if url not in LOCAL_COPIES:
        raise OfflineError(f"no local copy is known for {url} (add it to package.json and LOCAL_COPIES)")
    package, inner = LOCAL_COPIES[url]
    path = node_modules / package / inner
    if not path.is_file():
        raise OfflineError(f"{url}: {path} is missing (run `npm ci` at the repository root, or `make vendor`)")
    return path


def resolve_all(refs: list[Ref], node_modules: Path) -> dict[str, Path]:
    """URL -> installed file for every ref, checked before anything is written; all failures reported at once."""
    found, errors = {}, []
    for url in dict.fromkeys(r.url for r in refs):
        try:
            found[url] = source_of(url, node_modules)
        except OfflineError as e:
            errors.append(str(e))
    if errors:
        raise OfflineError("the asv dashboard would need the network:\n  " + "\n  ".join(errors))
    return found


def css_dependencies(css: Path) -> list[str]:
    """Relative files a vendored stylesheet pulls in (Bootstrap's glyphicon fonts); external ones are an error."""
    deps = []
    for m in _CSS_URL.finditer(css.read_text(encoding="utf-8", errors="replace")):
        url = (m.group(2) or m.group(4)).strip()
        if is_external(url):
            raise OfflineError(f"{css} loads {url}, which has no local copy")
        if not url.startswith(("data:", "#")):
            deps.append(re.split(r"[?#]", url)[0])
    return deps


def copy_into(src: Path, node_modules: Path, vendor: Path) -> Path:
    """Copy `src` to the same path under `vendor` (a stylesheet with the files it references, plus the package's
    license); the path kept means relative url()s inside still resolve. Returns the copy."""
    rel = src.relative_to(node_modules)
    files = [rel] + [(rel.parent / dep) for dep in (css_dependencies(src) if src.suffix == ".css" else [])]
    files += [p.relative_to(node_modules) for p in (node_modules / rel.parts[0]).glob("LICEN[SC]E*")]
    for f in files:
        target = Path(os.path.normpath(vendor / f))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(os.path.normpath(node_modules / f)), target)
    return vendor / rel


def rewrite(html: Path, refs: list[Ref], copies: dict[str, Path]) -> None:
    """Point each external tag of `html` at its local copy, dropping the CDN-only attributes."""
    text = html.read_text(encoding="utf-8")
    for ref in refs:
        local = Path(os.path.relpath(copies[ref.url], html.parent)).as_posix()
        tag = _URL_ATTR.sub(lambda m, local=local: f"{m.group(1)}={m.group(2)}{local}{m.group(2)}", ref.tag, count=1)
        text = text.replace(ref.tag, _CDN_ATTRS.sub("", tag))
    html.write_text(text, encoding="utf-8")


def make_offline(html_dir: Path, node_modules: Path = ROOT / "node_modules") -> dict[str, Path]:
    """Vendor every external resource of the dashboard in `html_dir`; returns URL -> local copy. Idempotent."""
    if not (html_dir / "index.html").is_file():
        raise OfflineError(f"{html_dir} holds no index.html: run `asv publish` first")
    refs = external_refs(html_dir)
    sources = resolve_all(refs, node_modules)
    copies = {url: copy_into(src, node_modules, html_dir / VENDOR_DIR) for url, src in sources.items()}
    for html in dict.fromkeys(r.html for r in refs):
        rewrite(html, [r for r in refs if r.html == html], copies)
    left = external_refs(html_dir)
    if left:
        raise OfflineError("still external after rewriting: " + ", ".join(sorted({r.url for r in left})))
    return copies


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.asv_offline", description=__doc__.splitlines()[0])
    ap.add_argument("html_dir", type=Path, help="the directory `asv publish` wrote (results/asv/html)")
    ap.add_argument("--node-modules", type=Path, default=ROOT / "node_modules",
                    help="where `npm ci` installed package.json's libraries (default: the repository's)")
    args = ap.parse_args(argv)
    try:
        copies = make_offline(args.html_dir, args.node_modules)
    except OfflineError as e:
        print(f"asv_offline: error: {e}", file=sys.stderr)
        return 1
    print(f"asv_offline: {args.html_dir}: {len(copies)} external resources now served from {VENDOR_DIR}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
