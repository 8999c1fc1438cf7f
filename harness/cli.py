"""The `varlen` command: env, check, bench, report. Frameworks are imported only in the processes that need them."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness import results

RESULTS = Path("results")
FRAMEWORKS = ("torch", "tensorflow", "jax")


def _frameworks(requested: list[str] | None) -> list[str]:
    import adapters

    present = [f for f in FRAMEWORKS if f in adapters.available()]
    if not requested:
        missing = sorted(set(FRAMEWORKS) - set(present))
        if missing:
            print(f"varlen: not installed, skipped: {', '.join(missing)}", file=sys.stderr)
        return present
    for f in requested:
        if f not in adapters.KNOWN:
            raise SystemExit(f"varlen: unknown framework {f!r}; known: {list(adapters.KNOWN)}")
        if f not in present:
            raise SystemExit(f"varlen: framework {f!r} is not installed: pip install 'varlen[{f}]'")
    return requested


def cmd_env(args) -> int:
    import adapters

    for name in adapters.KNOWN:
        if name not in adapters.available():
            print(f"{name:<11} not installed")
            continue
        a = adapters.get(name)
        print(f"{name:<11} {a.version:<32} devices={a.devices()} strategies(lstm)={a.rnn_strategies('lstm')}")
    return 0


def cmd_check(args) -> int:
    from harness import check, report

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    records = check.run(_frameworks(args.framework), str(out))
    if args.json:
        for r in records:
            print(json.dumps(r, allow_nan=True))
    else:
        print(report.check_summary_text(records))
    bad = [r for r in records if r.get("kind") in ("op", "strategy", "error") and not r["equivalent"]]
    if bad:
        print(f"varlen check: {len(bad)} non-equivalent strategy/op results (see {out})", file=sys.stderr)
    return 1 if bad else 0


def cmd_bench(args) -> int:
    import adapters
    from harness import bench
    from suites import axes

    frameworks = _frameworks(args.framework)
    grids = [dict(g) for g in axes.QUICK] if args.quick else [{
        "ops": axes.OPS, "batches": axes.BATCHES, "max_lens": axes.MAX_LENS, "profiles": axes.PROFILES,
        "cells": axes.CELLS[:1], "hidden": axes.HIDDEN, "dtypes": axes.DTYPES}]
    for key, value in (("ops", args.op), ("batches", args.batch), ("max_lens", args.max_len),
                       ("profiles", args.profile), ("cells", args.cell), ("hidden", args.hidden),
                       ("dtypes", args.dtype)):
        for grid in grids:
            if value:
                grid[key] = tuple(value)
    strategies = {f: adapters.declared_strategies(f) for f in frameworks}
    if args.strategy:
        strategies = {f: [s for s in v if s in args.strategy] for f, v in strategies.items()}
    devices = tuple(args.device or ["cpu"])
    cases = list({axes.case_key(c): c for grid in grids
                  for c in axes.cases(frameworks=frameworks, strategies=strategies, devices=devices, **grid)}.values())
    print(f"varlen bench: {len(cases)} cases -> {args.out}")
    bench.sweep(cases, args.out, resume=args.resume, timeout=args.timeout,
                overhead=tuple(frameworks) if args.quick else ())
    recs = [r for r in results.read([args.out]) if r.get("source") == "bench"]
    failed = [r for r in recs if r.get("status") != "ok"]
    print(f"varlen bench: {len(recs) - len(failed)} measured, {len(failed)} failed")
    for r in failed:
        print(f"  FAILED {r.get('key')}: {r.get('error')}")
    return 0


def cmd_report(args) -> int:
    from harness import report

    paths = args.results or sorted(str(p) for p in RESULTS.glob("**/*.jsonl") if "report" not in p.parts)
    page = report.build(results.read(paths), args.out, asv_html=Path(args.asv_html))
    print(f"varlen report: {page} (+ report.md) from {len(paths)} result file(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="varlen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="frameworks, versions and devices found").set_defaults(func=cmd_env)
    p = sub.add_parser("check", help="equivalence matrix against the NumPy reference, and the recipes' verdicts")
    p.add_argument("--framework", action="append", help="limit to this framework (repeatable)")
    p.add_argument("--json", action="store_true", help="print the records as JSON lines instead of a table")
    p.add_argument("--out", default=str(RESULTS / "check.jsonl"), help="records file (rewritten)")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("bench", help="timing / memory sweep, one tidy record per measurement")
    p.add_argument("--quick", action="store_true", help="the quick grid (every op/framework/strategy once)")
    p.add_argument("--framework", action="append", help="torch, tensorflow, jax (repeatable)")
    p.add_argument("--op", action="append", help="pad, mask, pack_unpack, masked_mean, rnn_forward, "
                   "rnn_forward_backward (repeatable)")
    p.add_argument("--strategy", action="append", help="limit RNN strategies (repeatable)")
    p.add_argument("--device", action="append", choices=["cpu", "gpu"])
    p.add_argument("--batch", action="append", type=int)
    p.add_argument("--max-len", action="append", type=int)
    p.add_argument("--profile", action="append")
    p.add_argument("--cell", action="append")
    p.add_argument("--hidden", action="append", type=int)
    p.add_argument("--dtype", action="append")
    p.add_argument("--out", default=str(RESULTS / "bench.jsonl"))
    p.add_argument("--resume", action="store_true", help="skip the cases already measured in --out")
    p.add_argument("--timeout", type=float, default=600, help="seconds per case before it is marked failed")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("report", help="HTML + Markdown comparison report from result files")
    p.add_argument("results", nargs="*", help="JSON-lines result files (default: every results/**/*.jsonl)")
    p.add_argument("--out", default=str(RESULTS / "report"))
    p.add_argument("--asv-html", default=str(RESULTS / "asv" / "html"), help="published asv dashboard to link")
    p.set_defaults(func=cmd_report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
