"""The published asv dashboard renders with no network: `harness.asv_offline` vendors asv's CDN libraries, and a
headless Chromium that can reach only loopback draws a benchmark graph from it.

The results come from a throwaway asv project (one trivial benchmark, its own git repository) rather than the
suites: the dashboard's JavaScript is the same whatever the benchmarks, and the suites take minutes to run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness import asv_offline
from tests.conftest import REQUIRE_ALL

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
BENCH = "bench_tiny.time_tiny"
BIN = Path(sys.executable).parent
# Everything but loopback is unreachable: no proxy answers on port 9, and every other host name fails to resolve.
NO_NETWORK = ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
              "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def need(ok: bool, what: str) -> None:
    """Skip when a tool is missing, or fail under VARLEN_REQUIRE_ALL=1 (`make test`), where none may be skipped."""
    if ok:
        return
    if REQUIRE_ALL:
        pytest.fail(what + " (VARLEN_REQUIRE_ALL=1: none may be skipped)")
    pytest.skip(what)


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    need(exe is not None, "chromium is not installed: apt-get install chromium (or `make chromium` as root)")
    return exe


def require_node_modules() -> None:
    packages = {pkg for pkg, _ in asv_offline.LOCAL_COPIES.values()}
    need(all((NODE_MODULES / p / "package.json").is_file() for p in packages),
         "node_modules lacks the dashboard's libraries: run `make vendor` (npm ci; needs npm)")


def asv(args: list[str], cwd: Path, home: Path) -> str:
    env = dict(os.environ, HOME=str(home), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run([str(BIN / "asv"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"asv {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def tiny_project(path: Path) -> str:
    """A git repository holding an asv config and one trivial benchmark; returns its commit hash."""
    (path / "bench").mkdir(parents=True)
    (path / "bench" / "__init__.py").write_text("")
    (path / "bench" / "bench_tiny.py").write_text("def time_tiny():\n    sum(range(100))\n")
    conf = {"version": 1, "project": "varlen", "project_url": "https://example.invalid/varlen", "repo": ".",
            "branches": ["main"], "environment_type": "existing", "benchmark_dir": "bench",
            "results_dir": "results", "html_dir": "html", "env_dir": "env"}
    (path / "asv.conf.json").write_text(json.dumps(conf))
    git = ["git", "-c", "user.name=varlen", "-c", "user.email=varlen@example.invalid", "-c", "init.defaultBranch=main"]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "tiny"]):
        subprocess.run([*git, *cmd], cwd=path, check=True, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """`asv publish` output for one quick run of the tiny project, as asv writes it (CDN URLs and all)."""
    base = tmp_path_factory.mktemp("asv")
    project, home = base / "project", base / "home"
    home.mkdir()
    commit = tiny_project(project)
    asv(["machine", "--yes", "--machine", "tiny"], project, home)
    # an `existing` environment saves results only under an explicit commit hash
    asv(["run", "--python=same", "--quick", "--machine", "tiny", "--set-commit-hash", commit], project, home)
    asv(["publish"], project, home)
    return project / "html"


@pytest.fixture
def site(published, tmp_path) -> Path:
    """A private copy of the published dashboard, for a test to vendor (or not)."""
    return Path(shutil.copytree(published, tmp_path / "html"))


class _Handler(SimpleHTTPRequestHandler):
    def log_request(self, code="-", size="-"):
        self.server.seen.append((self.path.split("?")[0], int(code)))


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A browser that leaves mid-response (asv's redirect to error.html) is not a server error worth a trace."""


@contextmanager
def serve(directory: Path):
    """Serve `directory` on a free loopback port (asv's page fetches its JSON with XHR, which file:// blocks);
    yields (base URL, list of (path, status) the browser requested)."""
    server = _Server(("127.0.0.1", 0), partial(_Handler, directory=str(directory)))
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.seen
    finally:
        server.shutdown()
        server.server_close()


def render(site: Path, profile: Path, page: str = BENCH) -> tuple[str, list[str], list[tuple[str, int]]]:
    """Open `index.html#<page>` (default: the benchmark's graph) in headless Chromium with the network blocked:
    (DOM, console lines, requests the loopback server saw)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", *NO_NETWORK,
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--window-size=1200,900"]
    with serve(site) as (base, seen):
        proc = subprocess.run([chromium(), *flags, "--dump-dom", f"{base}/index.html#{page}"],
                              capture_output=True, text=True, timeout=180)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console, list(seen)


def assert_graph_drawn(dom: str, console: list[str], seen: list[tuple[str, int]]) -> None:
    """The page loaded every file it asked for, logged nothing, fetched the benchmark's data and drew it."""
    failed = [(path, code) for path, code in seen if code != 200]
    assert not failed, f"requests that failed on the loopback server: {failed}"
    assert "error.html" not in {p.lstrip("/") for p, _ in seen}, "asv gave up: a JavaScript dependency did not load"
    assert not console, "console messages (asv logs none when it renders):\n" + "\n".join(console)
    assert any(p.startswith("/graphs/") and p.endswith(f"/{BENCH}.json") for p, _ in seen), (
        f"the graph's data was never fetched; requests: {seen}")
    graph = re.search(r'<div[^>]*id="main-graph".*?id="overview"', dom, re.DOTALL)
    assert graph, "no #main-graph in the rendered DOM:\n" + dom[:2000]
    assert '<canvas class="flot-base"' in graph.group(0), "flot drew no canvas in #main-graph"
    ticks = re.findall(r'class="flot-tick-label[^"]*"[^>]*>([^<]+)<', graph.group(0))
    assert len(ticks) >= 2 and any(re.search(r"\d", t) for t in ticks), f"no numeric axis ticks: {ticks}"


def test_vendored_dashboard_draws_a_graph_with_no_network(site, tmp_path):
    require_node_modules()
    copies = asv_offline.make_offline(site, NODE_MODULES)
    assert set(copies) == set(asv_offline.LOCAL_COPIES)
    assert asv_offline.external_refs(site) == []
    assert (site / "vendor" / "bootstrap" / "dist" / "fonts" / "glyphicons-halflings-regular.woff").is_file()
    assert_graph_drawn(*render(site, tmp_path / "chrome"))


def test_vendored_list_page_sorts_its_table_with_the_substituted_stupidtable(site, tmp_path):
    """stupid-table-plugin 1.1.3 stands in for stupidtable 1.0.1 (not on npm): the list page must still sort."""
    require_node_modules()
    asv_offline.make_offline(site, NODE_MODULES)
    dom, console, seen = render(site, tmp_path / "chrome", "summarylist")
    assert not console and all(code == 200 for _, code in seen), (console, seen)
    assert re.search(r'<th data-sort="\w+" class="sorting-(asc|desc)', dom), "stupidtable did not sort the list"


def test_the_browser_check_fails_when_the_offline_step_is_skipped(site, tmp_path):
    """Without vendoring the CDN loads are blocked, asv redirects to its error page, and the check must see it:
    this also proves the network really is blocked in the browser test."""
    dom, console, seen = render(site, tmp_path / "chrome")
    with pytest.raises(AssertionError, match="asv gave up"):
        assert_graph_drawn(dom, console, seen)


def test_unknown_external_url_fails_naming_it_and_rewrites_nothing(site, capsys):
    require_node_modules()
    index = site / "index.html"
    url = "https://cdn.example.invalid/lib/new-dependency.min.js"
    index.write_text(index.read_text().replace("</head>", f'<script src="{url}"></script></head>'))
    before = index.read_text()
    assert asv_offline.main([str(site), "--node-modules", str(NODE_MODULES)]) == 1
    assert url in capsys.readouterr().err
    assert index.read_text() == before and not (site / "vendor").exists()


def test_missing_node_modules_fails_naming_the_url(site, tmp_path, capsys):
    assert asv_offline.main([str(site), "--node-modules", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "https://code.jquery.com/jquery-3.3.1.min.js" in err and "npm ci" in err


def test_every_vendored_package_is_pinned_in_package_json_and_the_lockfile():
    """npm ci installs exactly what the lockfile says; a range in package.json would let a re-lock drift."""
    deps = json.loads((ROOT / "package.json").read_text())["dependencies"]
    lock = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    for pkg in {p for p, _ in asv_offline.LOCAL_COPIES.values()}:
        assert re.fullmatch(r"\d+\.\d+\.\d+", deps.get(pkg, "")), f"{pkg} is not pinned exactly in package.json"
        assert lock[f"node_modules/{pkg}"]["version"] == deps[pkg], f"{pkg}: package-lock.json disagrees"
