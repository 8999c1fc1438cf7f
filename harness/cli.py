"""The `varlen` command: env, check, bench, report. Frameworks are imported only in the processes that need them.

Exit codes tell the truth: 0 = everything measured / equivalent; 1 = a failed case, a non-equivalent cell, or a
report with nothing to show; 2 = bad usage (reported before any work starts); 130 = interrupted (finished records
are kept; the message says how to resume).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from harness import axes, records, results, timing

RESULTS = Path("results")


class Usage(Exception):
    """Bad usage: exit 2 with this message, before any work."""


def _positive(kind: str, number: type = int, noun: str = "a positive integer"):
    """An argparse type: a `number` above 0 (and finite: NaN and inf fail), else a usage error naming `kind`."""
    def parse(text: str):
        try:
            value = number(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{kind} must be {noun}, got {text!r}") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{kind} must be {noun}, got {text}")
        return value
    return parse


def _results_file(out: Path) -> None:
    """--out of check and bench: a JSON-lines file this user can append to, or a usage error before any work (a
    run whose records cannot be written would measure for nothing: `check` said "no check records", exit 0). An
    existing file is opened for appending (its content untouched); a new one must be possible to make."""
    if out.is_dir():
        raise Usage(f"--out {out} is a directory; give a results file (JSON lines)")
    if not out.exists():
        return _can_make(out)
    try:
        open(out, "a").close()
    except OSError as e:
        raise Usage(f"--out {out}: cannot append to it ({e.strerror or e})") from None


def _report_dir(out: Path) -> None:
    """--out of report: a folder that exists or can be made, or a usage error before any work."""
    if out.exists() and not out.is_dir():
        raise Usage(f"--out {out} is a file; give the report's folder")
    _can_make(out)


def _can_make(out: Path) -> None:
    """A usage error unless files can be written in folder `out`, or `out` (a file or folder made later with its
    missing folders) can be made: a nameless scratch file is made and dropped in `out` itself or the nearest
    existing folder above it (root passes every permission check: /proc or a read-only mount only show on
    trying)."""
    above = out if out.is_dir() else next(p for p in out.absolute().parents if p.exists())
    if not above.is_dir():
        raise Usage(f"--out {out}: {above} is not a folder")
    try:
        tempfile.TemporaryFile(dir=above).close()
    except OSError as e:
        raise Usage(f"--out {out}: cannot write in {above} ({e.strerror or e})") from None


# -- many machines: --shard, --cluster (harness.cluster) ------------------------------------------------------
def _shard(text: str) -> tuple[int, int]:
    """--shard K/N: shard K of N, 1 <= K <= N."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard is K/N, e.g. 1/4, got {text!r}") from None
    if n < 1 or k < 1:
        raise argparse.ArgumentTypeError(f"--shard K/N: {'N' if n < 1 else 'K'} must be at least 1, got {text!r}")
    if k > n:
        raise argparse.ArgumentTypeError(f"--shard K/N: K={k} exceeds N={n}")
    return k, n


def _cluster_client(address: str):
    """A client of the Dask scheduler at `address`, or a usage error naming why not (before any work)."""
    from harness import cluster

    try:
        return cluster.connect(address)
    except cluster.Unreachable as e:
        raise Usage(str(e)) from None
# -- end many machines -----------------------------------------------------------------------------------------


def _frameworks(requested: list[str] | None) -> list[str]:
    """The frameworks to run: the requested ones (each must be installed) or every installed one."""
    import adapters

    present = [f for f in axes.FRAMEWORKS if f in adapters.available()]
    if not requested:
        missing = sorted(set(axes.FRAMEWORKS) - set(present))
        if missing:
            print(f"varlen: not installed, skipped: {', '.join(missing)}", file=sys.stderr)
        if not present:
            raise Usage(f"none of {list(axes.FRAMEWORKS)} is installed: pip install 'varlen[all]'")
        return present
    for f in requested:
        if f not in present:
            raise Usage(f"framework {f!r} is not installed: pip install 'varlen[{f}]'")
    return list(dict.fromkeys(requested))


def _probe_gpu(frameworks: list[str]) -> None:
    """Usage error unless every framework sees a GPU, naming what each sees (a subprocess each: frameworks stay
    out of this process)."""
    from harness.proc import spawn

    blind = []
    for fw in frameworks:
        proc = spawn("harness.probe", fw)
        out, err = proc.communicate(timeout=300)
        info = json.loads(out.strip().splitlines()[-1]) if proc.returncode == 0 and out.strip() else {}
        if "gpu" not in info.get("devices", []):
            blind.append(info.get("report") or f"{fw}: probe failed: {err.strip()[-200:]}")
    if blind:
        raise Usage("--device gpu, but no GPU is visible here: " + "; ".join(blind))


def cmd_env(args) -> int:
    import adapters

    for name in adapters.KNOWN:
        if name not in adapters.available():
            print(f"{name:<11} not installed")
            continue
        a = adapters.get(name)
        named = [d + "".join(f" ({v})" for v in a.device_fields(d).values()) for d in a.devices()]  # the GPU's model
        print(f"{name:<11} {a.version}\n{'':<11} devices: {_listed(named)}")
        for family in a.STRATEGIES:
            declared = adapters.declared_strategies(name, family)
            for device in a.devices():
                usable = a.strategies(family, device=device)
                print(f"{'':<11} {family} ({device}): {_listed(usable)}")
                for s in (s for s in declared if s not in usable):
                    print(f"{'':<11}   not on {device}: {s} ({a.why_not(family, s, device=device)})")
    return 0


def _progress_bar(total: int, what: str):
    """A progress bar on stderr: stdout carries only the command's result (`check --json` pipes into jq)."""
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(transient=False, console=Console(stderr=True))
    task = bar.add_task(what, total=total)
    return bar, task


def _strict_json(rec: dict) -> dict:
    """`rec` for strict JSON (RFC 8259 has no Infinity or NaN: jq and most parsers refuse them): a non-finite float
    becomes the string "inf", "-inf" or "nan" (a failed cell's max_abs_err is inf)."""
    return {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in rec.items()}


def cmd_check(args) -> int:
    from harness import check, families
    from harness.report import check_summary_text

    frameworks = _frameworks(args.framework)
    devices = list(dict.fromkeys(args.device or ["cpu"]))
    fams = list(dict.fromkeys(args.family or families.FAMILIES))
    strategies = list(dict.fromkeys(args.strategy or []))
    if strategies:
        frameworks, fams = _checked_strategies(strategies, frameworks, fams)
    out = Path(args.out)
    _results_file(out)
    if "gpu" in devices:
        _probe_gpu(frameworks)
    run = records.run_id()
    only = f", strategies {_listed(strategies)} only (no verdicts)" if strategies else ""
    print(f"varlen check: {_listed(frameworks)} on {_listed(devices)}, families {_listed(fams)}{only} -> {out} "
          f"(run {run})", file=sys.stderr if args.json else sys.stdout)  # --json: stdout holds the records only
    bar, task = _progress_bar(len(frameworks) * len(devices) * len(fams), "varlen check")
    with bar:
        recs = check.run(frameworks, devices, str(out), families=fams, jobs=args.jobs or check.default_jobs(),
                         strategies=strategies or None,
                         progress=lambda fw, dev, fam: bar.update(task, advance=1,
                                                                  description=f"check {fw} ({dev}): {fam} done"))
    if args.json:
        for r in recs:
            print(json.dumps(_strict_json(r), allow_nan=False))
    else:
        print(check_summary_text(recs))
    bad = check.failures(recs)
    if bad:
        print(f"varlen check: {len(bad)} non-equivalent strategy/op results (see {out}, run {records.run_id()})",
              file=sys.stderr)
    missing = check.unfinished(recs, frameworks, devices, fams)
    if missing:
        print(f"varlen check: {len(missing)} of {len(frameworks) * len(devices) * len(fams)} framework/device/family "
              f"checks not recorded to their end in {out} (run {records.run_id()}): {', '.join(missing[:6])}"
              + (", ..." if len(missing) > 6 else ""), file=sys.stderr)
    # a strategy asked for by name that no cell checked (its precondition excludes it on these devices, e.g. a
    # GPU-only one on the CPU) was not checked: an empty table must not read as a pass
    named = {r.get("name") for r in recs if r.get("kind") == "strategy"}
    unchecked = [s for s in strategies if s not in named]
    if unchecked and not missing:
        print(f"varlen check: --strategy {_listed(unchecked)}: no cell checked on {_listed(devices)} (its "
              f"precondition excludes every case there; `varlen env` says why)", file=sys.stderr)
    return 1 if bad or missing or unchecked else 0


def _checked_strategies(strategies: list[str], frameworks: list[str], fams: list[str]) -> tuple[list, list]:
    """`varlen check --strategy`: the frameworks and families to check (those of the selected ones that declare one
    of `strategies`); a usage error for a strategy that none of them declares."""
    import adapters

    declared = {(f, fam): adapters.declared_strategies(f, fam) for f in frameworks for fam in fams
                if fam in adapters.STRATEGY_FAMILIES}
    known = sorted({s for names in declared.values() for s in names})
    for s in strategies:
        if s not in known:
            raise Usage(f"--strategy {s!r}: no strategy of that name in the families {_listed(fams)} of "
                        f"{_listed(frameworks)}; declared there: {', '.join(known) or 'none'}")
    hit = [key for key, names in declared.items() if set(names) & set(strategies)]
    return ([f for f in frameworks if any(f == k[0] for k in hit)],
            [fam for fam in fams if any(fam == k[1] for k in hit)])


def _file_profiles(args) -> list[dict]:
    """The user's length files as profile sources (read and validated now: a bad file is a usage error)."""
    from harness.lengths import LengthsError, is_table, source_fields

    if args.lengths_column and not any(is_table(p) for p in args.lengths or []):
        raise Usage(f"--lengths-column {args.lengths_column!r} names a column of a --lengths CSV/Parquet file, and "
                    "none was given")
    given = ([(f"--lengths {p}", p, args.lengths_column, "values") for p in args.lengths or []]
             + [(f"--lengths-from-text {p}", p, None, "text") for p in args.lengths_from_text or []])
    try:
        sources = [source_fields(p, column, kind) for _, p, column, kind in given]
    except LengthsError as e:
        raise Usage(str(e)) from None
    first: dict[str, tuple[str, dict]] = {}
    for (flag, *_), src in zip(given, sources):  # the same file given twice is one profile, not a clash
        seen = first.setdefault(src["profile"], (flag, src))
        if seen[1] != src:
            raise Usage(f"{seen[0]} and {flag} would both be profile {src['profile']!r} (a lengths file's profile is "
                        "named after its file name, in every record and report): rename or link one of them")
    return sources


def _bench_grids(args) -> list[dict]:
    grids = [dict(g) for g in axes.QUICK] if args.quick else [dict(axes.FULL)]
    files = _file_profiles(args)
    for key, value in (("ops", args.op), ("batches", args.batch), ("max_lens", args.max_len),
                       ("profiles", args.profile), ("cells", args.cell), ("hidden", args.hidden),
                       ("dtypes", args.dtype)):
        if value:
            for grid in grids:
                grid[key] = tuple(dict.fromkeys(value))
    if files:
        for grid in grids:
            if grid.get("with_files") or not args.quick:  # the quick grid's batch/length sweeps stay synthetic
                grid["profiles"] = (*grid["profiles"], *files)
    return grids


def _warn_truncation(cases: list[dict]) -> None:
    """One line per lengths file and --max-len where the file holds longer lengths (truncated to it)."""
    from harness.lengths import truncation_warnings

    files = list({c["profile"]: {k: c[k] for k in c if k.startswith("lengths_") or k == "profile"}
                  for c in cases if c.get("lengths_file")}.values())
    for line in truncation_warnings(files, {c["max_len"] for c in cases if c.get("lengths_file")}):
        print(f"varlen bench: {line}", file=sys.stderr)


def _one_case_each(ops, frameworks: list[str], strategies: dict, devices: tuple[str, ...]) -> list[dict]:
    """The cases of `ops` at one batch size, length and profile: what each op runs, for the messages of
    `_every_option_selects`."""
    return axes.cases(ops=ops, frameworks=frameworks, strategies=strategies, devices=devices, batches=(1,),
                      max_lens=(1,), profiles=("equal",))


def _ops_taking(frameworks: list[str], strategies: dict, devices: tuple[str, ...], field: str) -> list[str]:
    """Every op (not only the selected ones) whose cases carry `field` for these frameworks and strategies (a
    strategy: only ops of a strategy family): where an option would apply, for the error saying it applies to none."""
    from harness.families import OPS, strategy_ops

    return list(dict.fromkeys(c["op"] for c in _one_case_each(OPS, frameworks, strategies, devices)
                              if field in c and (field != "strategy" or c["op"] in strategy_ops())))


def _every_option_selects(args, cases: list[dict], grids: list[dict], frameworks: list[str], declared: dict,
                          devices: tuple[str, ...]) -> None:
    """A usage error for an option value that selects nothing: a --strategy, --cell or --hidden that no case of
    the selected ops carries (--strategy packed or --cell gru with only `pad`; --cell gru with only `rnn_epoch`,
    which runs the first cell given), or an --op left with no case (rnn_forward with only --strategy cross_entropy).
    Where the selected ops mix those an option fits and others (`--op pad --op rnn_forward --cell gru`), it applies
    to those it fits. `declared`: every declared strategy of the frameworks, to say where a value would apply."""
    from harness.families import strategy_ops

    ops = list(dict.fromkeys(op for grid in grids for op in grid["ops"]))
    for flag, field, values in (("--strategy", "strategy", args.strategy), ("--op", "op", args.op),
                                ("--cell", "cell", args.cell), ("--hidden", "hidden", args.hidden)):
        taking = [c for c in cases if field in c and (field != "strategy" or c["op"] in strategy_ops())]
        for value in dict.fromkeys(values or ()):
            if any(c[field] == value for c in taking):
                continue
            if field == "op":
                own = sorted({c["strategy"] for c in _one_case_each((value,), frameworks, declared, devices)})
                raise Usage(f"--op {value} selects no case: " + (
                    f"none of its strategies ({', '.join(own)}) is among --strategy {', '.join(args.strategy)}"
                    if args.strategy else "these options leave none of its cases"))
            only = {f: {fam: [s for s in v if s == value] for fam, v in d.items()} for f, d in declared.items()}
            where = _ops_taking(frameworks, only if field == "strategy" else declared, devices, field)
            if not set(where) & set(ops):
                raise Usage(f"{flag} {value} applies to none of the selected ops ({', '.join(ops)}): "
                            + (f"only to {', '.join(where)}" if where else f"to no op of {', '.join(frameworks)}"))
            skip = [f"{fw} {s} on {dev}" for fw, s, dev in axes.QUICK_SKIP if s == value and fw in frameworks]
            run = ", ".join(str(v) for v in dict.fromkeys(c[field] for c in taking))
            raise Usage(f"{flag} {value} selects no case of the selected ops ({', '.join(ops)})"
                        + (f": the quick grid leaves out {', '.join(skip)}" if args.quick and skip else
                           f": those that take it run {run} only" if taking else ""))


def _skipped_text(skipped: dict[str, str]) -> str:
    """What --resume skipped: "skipped 8 already recorded (6 measured, 2 not supported)"."""
    whys = [f"{list(skipped.values()).count(w)} {w}" for w in ("measured", "not supported") if w in skipped.values()]
    return f"skipped {len(skipped)} already recorded" + (f" ({', '.join(whys)})" if whys else "")


def cmd_bench(args) -> int:
    import adapters
    from harness import bench, cluster, families, paired, speedups

    if args.cluster is not None and not args.cluster.strip():  # `--cluster "$SCHED"` with SCHED unset
        raise Usage("--cluster was given an empty address (an unset variable?): a sweep meant for a cluster would "
                    "run here")
    if args.cluster and not cluster.available():
        raise Usage("--cluster needs Dask's distributed: pip install 'varlen[cluster]'")
    try:
        bench.stream_batches()
    except ValueError as e:
        raise Usage(str(e)) from None
    frameworks = _frameworks(args.framework)
    devices = tuple(dict.fromkeys(args.device or ["cpu"]))
    declared = {f: {fam: adapters.declared_strategies(f, fam) for fam in adapters.STRATEGY_FAMILIES}
                for f in frameworks}
    chosen = declared  # the strategies --strategy leaves
    if args.strategy:
        known = {s for d in declared.values() for v in d.values() for s in v}
        unknown = sorted(set(args.strategy) - known)
        if unknown:
            raise Usage(f"unknown strategy {unknown[0]!r} for {frameworks}; declared: {sorted(known)}")
        chosen = {f: {fam: [s for s in v if s in args.strategy] for fam, v in d.items()} for f, d in declared.items()}
    out = Path(args.out)
    _results_file(out)
    grids = _bench_grids(args)
    cases = list({axes.case_key(c): c for grid in grids for c in axes.cases(
        frameworks=frameworks, strategies=chosen, devices=devices, **grid)}.values())
    if args.strategy:
        cases = [c for c in cases if c["op"] not in families.strategy_ops() or c["strategy"] in args.strategy]
    budget = args.budget or (timing.QUICK_BUDGET_S if args.quick else timing.BUDGET_S)
    for c in cases:
        c["budget_s"] = budget  # every record says how long its calls were timed (not part of its key)
    _every_option_selects(args, cases, grids, frameworks, declared, devices)
    if not cases:
        raise Usage("these options select no case to run")
    _warn_truncation(cases)
    if "gpu" in devices and not args.cluster:  # on a cluster, the GPUs are the workers' (placed by resource)
        _probe_gpu(frameworks)
    if args.shard:
        total, cases = len(cases), bench.shard(cases, *args.shard)
        print(f"varlen bench: shard {args.shard[0]}/{args.shard[1]}: {len(cases)} of {total} cases")
        if not cases:
            return 0
    client = _cluster_client(args.cluster) if args.cluster else None
    # no overhead ratios on a cluster: they would be timed here, maybe beside a node's timed task
    overhead = tuple((fw, dev) for fw in frameworks for dev in devices) if args.quick and not client else ()
    skipped, again, overhead_done = {}, 0, set()
    if args.resume:
        skipped, again = bench.recorded(str(out), cases)
        cases = [c for c in cases if axes.case_key(c) not in skipped]
        overhead_done = bench.overhead_recorded(str(out), overhead)
        overhead = tuple(pair for pair in overhead if pair not in overhead_done)
    run = records.run_id()
    print(f"varlen bench: {len(cases)} cases -> {out} (run {run}{', on ' + args.cluster if client else ''})"
          + (f"; --resume: {_skipped_text(skipped)}" if args.resume else ""))
    if args.resume and again:
        print(f"varlen bench: --resume: {again} case(s) whose latest record says not supported run again: it was "
              "written by another commit, host or framework version, or by uncommitted code (which code is not "
              "recorded)")
    if overhead_done:
        print(f"varlen bench: --resume: overhead ratios already recorded for "
              f"{_listed(f'{fw} ({dev})' for fw, dev in sorted(overhead_done))}: not timed again")
    try:  # --resume: `cases` and `overhead` hold only what is left
        recs = bench.sweep(cases, str(out), timeout=args.timeout, overhead=overhead,
                           cluster_sweep=cluster.runner(client) if client else None, shared_worker=args.shared_worker)
    finally:
        if client is not None:
            client.close()
    failed = [r for r in recs if r["status"] == "failed"]
    unsupported = [r for r in recs if r["status"] == "unsupported"]
    print(f"varlen bench: {len(recs) - len(failed) - len(unsupported)} measured, {len(failed)} failed, "
          f"{len(unsupported)} not supported by their strategy's precondition here"
          + (f", {len(skipped)} skipped as already recorded (--resume)" if args.resume else "") + f" (run {run})")
    for r in failed:
        print(f"  FAILED {r['key']}: {r.get('error')}")
    ops = tuple(families.strategy_ops())
    side = []
    if not args.no_side_by_side and not client:  # on a cluster the cases ran on the nodes, not here
        first = speedups.baseline_pairs(recs, ops)
        if first:
            print(f"varlen bench: timing {len(first)} pair(s) on equal lengths side by side (the sweep's fastest "
                  f"strategy and each within {speedups.RUNOFF:g}x of it there or of a profile's fastest elsewhere, "
                  "called in alternation in one process: the fastest is the padded baseline; --no-side-by-side "
                  "skips this)")
            side = paired.run(first, str(out), timeout=args.timeout)
        second = speedups.pairs(recs, ops, side)
        if second:
            print(f"varlen bench: timing {len(second)} pair(s) against the padded baseline side by side (each "
                  f"profile's fastest strategy and any other within {speedups.RUNOFF:g}x of it in the sweep)")
            side = paired.run(second, str(out), timeout=args.timeout)
    speedup = speedups.lines(recs, ops, side)
    if speedup:
        print("varlen bench: fastest strategy vs the padded baseline (same framework, device and shape):")
        for line in speedup:
            print(f"  {line}")
    return 1 if failed else 0


def _results_in(folder: Path) -> list[str]:
    """Every results file (*.jsonl) under `folder`, a report's own folder left out; a usage error for a folder
    given on the command line that holds none."""
    found = sorted(str(p) for p in folder.glob("**/*.jsonl") if "report" not in p.relative_to(folder).parts)
    if not found and folder != RESULTS:
        raise Usage(f"{folder} holds no results file (*.jsonl)")
    return found


def _asv_dashboard(path: Path) -> Path:
    """--asv-html given: a folder that `asv publish` wrote (its index.html), or a usage error naming the path. Not
    given, the default folder may be missing: the page then says how to publish it."""
    if not path.exists():
        raise Usage(f"--asv-html {path}: no such folder")
    if not (path / "index.html").is_file():
        raise Usage(f"--asv-html {path}: " + ("holds no index.html: not a dashboard `asv publish` wrote"
                                              if path.is_dir() else "is a file; give the folder `asv publish` wrote"))
    return path


def cmd_report(args) -> int:
    from harness import report

    if args.results:
        missing = [p for p in args.results if not Path(p).exists()]
        if missing:
            raise Usage(f"no such results file: {missing[0]}")
        paths = [q for p in args.results for q in (_results_in(Path(p)) if Path(p).is_dir() else [p])]
    else:
        paths = _results_in(RESULTS)
        if not paths:
            print(f"varlen report: no results file (*.jsonl) under {RESULTS.resolve()}, the default (results/ of the "
                  "current folder): run `varlen check` and `varlen bench` here, or name the files or folders",
                  file=sys.stderr)
    _report_dir(Path(args.out))
    asv_html = RESULTS / "asv" / "html" if args.asv_html is None else _asv_dashboard(Path(args.asv_html))
    loaded = results.load(paths)
    if args.run not in (None, "latest") and args.run not in (ids := results.runs(loaded.records)):
        raise Usage(f"--run {args.run}: no record of that run in {len(paths)} results file(s)"
                    + (f"; the latest runs: {', '.join(ids[-3:])}" if ids else ""))
    for p in loaded.problems[:20]:
        print(f"varlen report: skipped {p}", file=sys.stderr)
    if len(loaded.problems) > 20:
        print(f"varlen report: ... and {len(loaded.problems) - 20} more lines that are not records (listed on the "
              "page)", file=sys.stderr)
    page, usable = report.build(loaded.records, args.out, asv_html=asv_html, problems=loaded.problems,
                                run=args.run)
    print(f"varlen report: {page} (+ report.md) from {len(paths)} result file(s), {len(loaded.records)} records")
    if not usable:
        print("varlen report: nothing to report (no valid, measured record): see the page", file=sys.stderr)
    return 0 if usable else 1


def _listed(values) -> str:
    return ", ".join(map(str, values))


def build_parser() -> argparse.ArgumentParser:
    import adapters
    from harness.families import FAMILIES, OPS

    parser = argparse.ArgumentParser(prog="varlen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="frameworks, versions, devices, and each family's strategies per device (those whose "
                   "precondition fails there with the reason)").set_defaults(func=cmd_env)
    fws = list(axes.FRAMEWORKS)
    p = sub.add_parser("check", help="equivalence matrix against the NumPy reference, and the recipes' verdicts")
    p.add_argument("--framework", action="append", choices=fws, help="limit to this framework (repeatable)")
    p.add_argument("--device", action="append", choices=list(axes.DEVICES),
                   help="cpu (default) and/or gpu (repeatable)")
    p.add_argument("--family", action="append", choices=list(FAMILIES),
                   help="limit to this op family (repeatable; default: every family)")
    p.add_argument("--strategy", action="append", metavar="S",
                   help="only this strategy's equivalence cells (repeatable), in the families and frameworks that "
                        "declare it, without the recipes' and native behaviours' verdicts (default: everything)")
    p.add_argument("--json", action="store_true", help="print the records as strict JSON lines (a non-finite "
                   "number as the string \"inf\", \"-inf\" or \"nan\") instead of the summary")
    p.add_argument("--jobs", type=_positive("--jobs"), metavar="N",
                   help="frameworks checked at once on the CPU, one process each (default: one per core; a GPU's "
                        "are always checked one at a time)")
    p.add_argument("--out", default=str(RESULTS / "check.jsonl"), metavar="FILE",
                   help="results file, appended to, never rewritten; missing folders are made (default: %(default)s)")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("bench", help="timing / memory sweep, one tidy record per measurement")
    p.add_argument("--quick", action="store_true",
                   help="the quick grid (every op/framework/strategy once, but for torch's njt attention and JAX's "
                   "scan_unroll8 on the CPU: harness/axes.py QUICK_SKIP)")
    p.add_argument("--framework", action="append", choices=fws, help="repeatable; default: every installed one")
    p.add_argument("--op", action="append", choices=list(OPS), metavar="OP",
                   help=f"repeatable; default: every op (--quick: all but the forward-only ones); one of {list(OPS)}")
    strategies = sorted({s for f in fws for fam in adapters.STRATEGY_FAMILIES
                         for s in adapters.declared_strategies(f, fam)})
    p.add_argument("--strategy", action="append", metavar="S", help=f"limit strategies (repeatable): {strategies}")
    p.add_argument("--device", action="append", choices=list(axes.DEVICES),
                   help="cpu (default) and/or gpu (repeatable)")
    quick = axes.QUICK_BASE
    p.add_argument("--batch", action="append", type=_positive("--batch"), metavar="B",
                   help=f"sequences per batch (repeatable; default: {_listed(axes.BATCHES)}; --quick: "
                        f"{_listed(quick['batches'])} and a batch-size sweep)")
    p.add_argument("--max-len", action="append", type=_positive("--max-len"), metavar="T",
                   help=f"padded length (repeatable; default: {_listed(axes.MAX_LENS)}; --quick: "
                        f"{_listed(quick['max_lens'])} and a length sweep)")
    p.add_argument("--profile", action="append", choices=list(axes.PROFILES), metavar="P",
                   help=f"synthetic length profile (repeatable; default: every one of {_listed(axes.PROFILES)}; "
                        f"--quick: {_listed(quick['profiles'])})")
    p.add_argument("--lengths", action="append", metavar="FILE",
                   help="a length distribution from your data: .npy, .csv/.parquet (see --lengths-column) or one "
                   "length per line; profile 'file:<stem>' (repeatable)")
    p.add_argument("--lengths-column", metavar="COL", help="the column of --lengths CSV/Parquet files")
    p.add_argument("--lengths-from-text", action="append", metavar="FILE",
                   help="lengths = whitespace tokens per non-blank line of a text file (repeatable)")
    p.add_argument("--cell", action="append", choices=list(axes.CELLS),
                   help=f"RNN cell of the RNN ops (repeatable; default: {_listed(axes.FULL['cells'])}; --quick: "
                        f"{_listed(quick['cells'])}; rnn_epoch runs the first given)")
    p.add_argument("--hidden", action="append", type=_positive("--hidden"), metavar="H",
                   help=f"RNN hidden size = input size (repeatable; default: {_listed(axes.HIDDEN)})")
    p.add_argument("--dtype", action="append", choices=list(axes.DTYPES),
                   help=f"repeatable; default: {axes.FULL['dtypes'][0]}")
    p.add_argument("--out", default=str(RESULTS / "bench.jsonl"), metavar="FILE",
                   help="results file, appended to, never rewritten; missing folders are made (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="skip the cases already recorded in --out: measured, or not supported by the same commit "
                        "(clean) and framework version on this host")
    p.add_argument("--timeout", type=_positive("--timeout", float, "a positive number of seconds"), default=600,
                   metavar="S", help="seconds per case before it is marked failed (default: %(default)s)")
    p.add_argument("--budget", type=_positive("--budget", float, "a positive number of seconds"), metavar="S",
                   help=f"seconds of timed calls per case, at least 5 samples (default: {timing.BUDGET_S}, --quick: "
                        f"{timing.QUICK_BUDGET_S}); the speedups printed are timed again side by side")
    p.add_argument("--shared-worker", action="store_true",
                   help="run a framework's GPU cases in one worker even where its allocator peak cannot be reset "
                        "(JAX; by default a fresh process each): faster, and those cases record no peak memory")
    p.add_argument("--no-side-by-side", action="store_true",
                   help="do not time each printed speedup again with its baseline in alternation (harness.paired)")
    p.add_argument("--shard", type=_shard, metavar="K/N", help="only shard K of N of the selected cases (a stable "
                   "split by case key, the same on every machine); `varlen report` merges the shards' files")
    p.add_argument("--cluster", metavar="ADDRESS", help="run on the Dask scheduler at ADDRESS, one task per "
                   "(framework, device) on workers advertising that resource (pip install 'varlen[cluster]')")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("report", help="HTML + Markdown comparison report from result files")
    p.add_argument("results", nargs="*", help="JSON-lines result files, or folders: every *.jsonl in them "
                   "(default: every results/**/*.jsonl)")
    p.add_argument("--out", default=str(RESULTS / "report"), metavar="DIR",
                   help="the report's folder (index.html, report.md, figures/), made if missing (default: %(default)s)")
    p.add_argument("--run", help="only the records of this run id ('latest' for the last run); default: the "
                   "latest record of every case across runs")
    p.add_argument("--asv-html", metavar="DIR", help="the published asv dashboard to link: a folder `asv publish` "
                   f"wrote (default: {RESULTS / 'asv' / 'html'}, when there; a given one must be)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Usage as e:
        print(f"varlen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = {"bench": "Resume with the same command plus --resume.",
                 "check": "Run it again (`--family` for only the families it did not finish: the report shows "
                          "them as incomplete until then)."}.get(args.command, "Run it again.")
        print(f"\nvarlen {args.command}: interrupted; every finished record is in the results file (run "
              f"{os.environ.get(records.RUN_ENV, '?')}). {again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
