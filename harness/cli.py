"""The `varlen` command: env, check, bench, report. Frameworks are imported only in the processes that need them."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

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
        print(f"{name:<11} {a.version:<14} devices={a.devices()} strategies(lstm)={a.rnn_strategies('lstm')}")
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
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
