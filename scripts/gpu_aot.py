"""Compile varlen's JAX GPU programs for a GPU this machine does not have, and say what XLA made of them.

XLA:GPU compiles without a device when it is given the device's description (a GpuTargetConfigProto): JAX's CUDA
plugin (`jax-cuda12-plugin`, kept in .venv-cuda by `make gpu-aot`, away from .venv) makes a compile-only device of
it, and `jax.jit(...).lower(...).compile()` runs XLA's whole GPU pipeline for it: fusion, command buffers, and
concat_pallas's Pallas kernels through XLA's own Triton and ptxas. A kernel asking for more shared memory than a
block of the target may have fails there (RESOURCE_EXHAUSTED), as it would have failed to launch.

For each case it runs one JAX RNN strategy's vjp (or forward) on a CPU batch through the JAX adapter, with every
`jax.jit` of the adapter compiled for the target in place of running (the calls return zeros of their results'
shapes, so a strategy of several programs goes on to its next one), and reports per program: compile seconds, the
kernels one call runs (while loops counted by XLA's known trip counts), the launches from the host (a CUDA graph
counting as one), and each Triton kernel's launch (grid, threads, shared memory) with ptxas's registers and spills
where ptxas is found (`--dump-to DIR` keeps XLA's dumps). Nothing is timed: this is no GPU.
`cudnn_lstm` cannot be compiled so (jax.experimental.rnn asks cuDNN for its workspace size while lowering, which
needs a GPU): it is refused with that reason.

    .venv-cuda/bin/python scripts/gpu_aot.py [--target h100] [--strategy S ...] [--cell lstm] [--hidden 128] ...

Exit status: 0 when every program compiled, 1 when one did not (its error printed), 2 on misuse.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.profiles import PROFILES  # noqa: E402 - NumPy only

# facts of the targets (NVIDIA's H100 SXM5 80GB and H200 SXM 141GB: 132 SMs, 227 KB of shared memory a block may
# opt in to, 228 KB an SM, 50 MB of L2), as XLA's GpuTargetConfigProto text; what XLA needs to compile for them. The
# driver's version (that of the lent H200: 580, CUDA 13.0) decides what XLA puts in CUDA graphs: without it XLA
# assumes a driver too old for conditional nodes and leaves every while loop out of them (scan_graph's point).
TARGETS = {
    "h100": dict(name="NVIDIA H100 80GB HBM3", memory=85_520_809_984, bandwidth=3_352_320_000_000),
    "h200": dict(name="NVIDIA H200", memory=150_754_820_096, bandwidth=4_800_000_000_000),
}
SMEM_OPTIN = 232_448  # bytes a thread block may have on sm_90 (227 KB)


def target_config(target: str) -> str:
    t = TARGETS[target]
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024  threads_per_warp: 32  threads_per_core_limit: 2048
  shared_memory_per_block: 49152  shared_memory_per_block_optin: {SMEM_OPTIN}  shared_memory_per_core: 233472
  core_count: 132  fpus_per_core: 128  clock_rate_ghz: 1.98  l2_cache_size: 52428800
  memory_bandwidth: {t['bandwidth']}  device_memory_size: {t['memory']}
  block_dim_limit_x: 2147483647  block_dim_limit_y: 65535  block_dim_limit_z: 65535
  registers_per_core_limit: 65536  registers_per_block_limit: 65536
  cuda_compute_capability {{ major: 9 minor: 0 }}
  driver_version: "13.0.0"  runtime_version: "12.9.0"  compile_time_toolkit_version: "12.9.0"
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 }}
device_description_str: "{t['name']}"
"""


# -- XLA's dump of one compiled program: its kernels, loops and Triton kernels (no framework needed) ---------------
LEAF = re.compile(r"^(\s*)(\d+): (k\w+)\s*\[[^\]]*\]\s*(.*)$")
LAUNCH = re.compile(r"(\S+) grid: \[(\d+), (\d+), (\d+)\] threads: \[(\d+), (\d+), (\d+)\]\s+"
                    r"shared_memory: (\d+) bytes")


def parse_thunks(text: str) -> list[dict]:
    """XLA's thunk sequence (`*.thunk_sequence.txt`) as a tree: [{"id", "kind", "launch"}], a kWhile's also with
    the "condition" and "body" thunks listed under its labels, one level deeper, and another thunk's with the
    "inner" ones it runs (a dynamic-slice fusion's copy) listed under it unlabelled. A line it cannot place is an
    error, not a thunk left out."""
    lines = [line for line in text.splitlines() if line.strip()]
    pos = 0

    def block(indent: int) -> list[dict]:
        nonlocal pos
        seq: list[dict] = []
        while pos < len(lines):
            m = LEAF.match(lines[pos])
            if m is None or len(m.group(1)) < indent:  # a while's label, or a shallower thunk: this block ends
                return seq
            if len(m.group(1)) > indent:
                raise ValueError(f"thunk sequence: line {pos + 1} is deeper than its block: {lines[pos]!r}")
            pos += 1
            thunk = {"id": int(m.group(2)), "kind": m.group(3), "launch": None}
            launch = LAUNCH.search(m.group(4))
            if launch:
                g = [int(v) for v in launch.groups()[1:]]
                thunk["launch"] = {"name": launch.group(1), "grid": g[:3], "threads": g[3:6], "shared": g[6]}
            seq.append(thunk)
            inner = LEAF.match(lines[pos]) if pos < len(lines) else None
            if thunk["kind"] != "kWhile" and inner and len(inner.group(1)) > indent:  # e.g. a dynamic-slice fusion
                thunk["inner"] = block(len(inner.group(1)))  # runs the thunks under it, unlabelled
            while thunk["kind"] == "kWhile" and pos < len(lines) and lines[pos].strip() in ("condition:", "body:"):
                part = lines[pos].strip()[:-1]
                pos += 1
                first = LEAF.match(lines[pos]) if pos < len(lines) else None
                thunk[part] = block(len(first.group(1))) if first and len(first.group(1)) > indent else []
        return seq

    first = LEAF.match(lines[0]) if lines else None
    tree = block(len(first.group(1)) if first else 0)
    if pos < len(lines):
        raise ValueError(f"thunk sequence: line {pos + 1} is neither a thunk nor a while's label: {lines[pos]!r}")
    return tree


def thunk_names(metadata: str) -> dict[int, str]:
    """thunk id -> the HLO instruction it runs (`*.thunk_metadata.txt`'s profile annotations)."""
    names = {}
    for block in metadata.split("thunk_metadata {")[1:]:
        ann, tid = re.search(r'profile_annotation: "([^"]*)"', block), re.search(r"thunk_id: (\d+)", block)
        if ann and tid:
            names[int(tid.group(1))] = ann.group(1)
    return names


def trip_counts(hlo: str) -> dict[str, int]:
    """HLO while instruction name -> XLA's known trip count (the optimized module's backend configs)."""
    out = {}
    for m in re.finditer(r"^\s*%?([\w.\-]+) = .*? while\(.*$", hlo, re.M):
        n = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', m.group(0))
        if n:
            out[m.group(1)] = int(n.group(1))
    return out


def kernels_per_call(thunks: list[dict], names: dict[int, str], trips: dict[str, int],
                     graphs: bool = False) -> tuple[int, list[str]]:
    """(the kernels and copies one call runs, the while loops whose trip count XLA does not know: counted once). A
    thunk that runs inner thunks counts as those; with `graphs` (the sequence after XLA's thunk passes), a command
    buffer counts as one: what the host launches."""
    unknown: list[str] = []

    def count(seq: list[dict]) -> int:
        n = 0
        for t in seq:
            if t["kind"] == "kWhile":
                name = names.get(t["id"], f"thunk {t['id']}")
                trip = trips.get(name)
                if trip is None:
                    unknown.append(name)
                    trip = 1
                n += trip * count(t["body"]) + (trip + 1) * count(t["condition"])
            elif graphs and t["kind"] == "kCommandBuffer":
                n += 1
            elif "inner" in t:
                n += count(t["inner"])
            else:
                n += 1
        return n

    return count(thunks), unknown


def triton_kernels(thunks: list[dict], names: dict[int, str], hlo: str) -> list[dict]:
    """The launches of the thunks that run a Triton custom call (Pallas kernels), anywhere in the tree."""
    triton = set(re.findall(r"^\s*%?([\w.\-]+) = [^\n]*custom_call_target=\"__gpu\$xla\.gpu\.triton\"", hlo, re.M))
    found = []

    def walk(seq):
        for t in seq:
            if t["launch"] and names.get(t["id"]) in triton:
                found.append(dict(t["launch"], hlo=names[t["id"]]))
            for part in ("condition", "body", "inner"):
                walk(t.get(part, []))

    walk(thunks)
    return found


PTXAS_TIMEOUT_S = 600
PTXAS = re.compile(r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
                   r"(\d+) bytes spill loads\s*\n[^\n]*Used (\d+) registers")


def ptxas_stats(text: str) -> dict[str, dict]:
    """`ptxas -v`'s report: kernel -> registers, spill stores and loads (bytes a thread)."""
    return {m.group(1): {"registers": int(m.group(5)), "spill_stores": int(m.group(3)),
                         "spill_loads": int(m.group(4))} for m in PTXAS.finditer(text)}


def read_dump(folder: Path, ptxas: str | None) -> dict:
    """What one program's XLA dump says: kernels a call, loops of unknown trip count, Triton kernels."""
    one = lambda pattern: next(iter(sorted(folder.glob(pattern))), None)  # noqa: E731
    seq, meta, hlo = one("*.thunk_sequence.txt"), one("*.thunk_metadata.txt"), one("*gpu_after_optimizations.txt")
    # XLA writes the sequence after its thunk passes (CUDA graphs made) only when they changed it
    passed = one("*.thunk_sequence_after_thunk_passes.txt") or seq
    if seq is None or meta is None or hlo is None:
        raise ValueError(f"XLA's dump in {folder} lacks its thunk sequence, thunk metadata or optimized HLO")
    thunks, names, text = parse_thunks(seq.read_text()), thunk_names(meta.read_text()), hlo.read_text()
    trips = trip_counts(text)
    kernels, unknown = kernels_per_call(thunks, names, trips)
    launches, _ = kernels_per_call(parse_thunks(passed.read_text()), names, trips, graphs=True)
    tri = triton_kernels(thunks, names, text)
    if tri and ptxas:
        for ptx in folder.glob("*.ptx"):
            body = ptx.read_text()
            if not any(f".entry {k['name']}(" in body for k in tri):
                continue
            try:  # ptxas compiles the kernel again (minutes for H=512's unrolled tiles)
                res = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", str(ptx), "-o", os.devnull],
                                     capture_output=True, text=True, timeout=PTXAS_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                continue
            stats = ptxas_stats(res.stdout + res.stderr)
            for k in tri:
                k.update(stats.get(k["name"], {}))
    return {"kernels_per_call": kernels, "host_launches_per_call": launches, "unknown_trip_loops": unknown,
            "triton": tri}


# -- compiling the adapter's programs for the target --------------------------------------------------------------
def compile_only(adapter, jax, device, dumps: Path, records: list):
    """Make `adapter` compile each of its jitted functions for `device` at its call, record what XLA made of it,
    and return zeros of its results' shapes on the CPU; its "gpu" device is then the CPU's (inputs live there)."""
    cpu = jax.devices("cpu")[0]
    real_jit = jax.jit
    sharding = jax.sharding.SingleDeviceSharding(device)

    class Proxy:
        def __getattr__(self, name):
            return getattr(jax, name)

        @staticmethod
        def jit(fn, **options):
            jitted = real_jit(fn, **options)

            def call(*args):
                specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), args)
                folder = dumps / f"program{len(records)}"
                t0 = time.perf_counter()
                record = {"program": getattr(fn, "__name__", "?")}
                records.append(record)
                lowered = jitted.lower(*specs)
                compiled = lowered.compile({**options.get("compiler_options", {}), "xla_dump_to": str(folder),
                                            "xla_dump_hlo_as_text": True})
                record["compile_s"] = round(time.perf_counter() - t0, 2)
                record["folder"] = folder
                del compiled
                shapes = jax.eval_shape(jitted, *args)
                return jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype, device=cpu), shapes)

            return call

    adapter.jax = Proxy()
    adapter._device = lambda name: cpu
    adapter.devices = lambda: ["cpu", "gpu"]


def target_device(target: str):
    """The compile-only CUDA device of `target` (JAX's CUDA plugin)."""
    from jax.experimental import topologies

    return topologies.get_topology_desc(platform="cuda", topology_name="", topology="1x1x1",
                                        target_config=target_config(target)).devices[0]


def run_case(args, strategy: str, device) -> dict:
    import jax

    import adapters
    from adapters.spec import RnnSpec, init_params
    from harness.data import cotangents, padded
    from harness.profiles import lengths_for

    fw = adapters.get("jax")  # one instance a process: its compiled functions of an earlier case are dropped
    fw.clear_compiled()
    records: list[dict] = []
    dumps = Path(tempfile.mkdtemp(prefix="varlen-aot-", dir=args.dump_to))
    compile_only(fw, jax, device, dumps, records)
    spec = RnnSpec(cell=args.cell, input_size=args.hidden, hidden_size=args.hidden, num_layers=args.layers,
                   bidirectional=args.bidirectional)
    L = lengths_for(args.profile, args.batch, args.max_len, args.seed)
    x = padded(L, args.max_len, (spec.input_size,), seed=args.seed, dtype=args.dtype)
    params = init_params(spec, seed=args.seed, dtype=args.dtype)
    case = {"strategy": strategy, "target": args.target, "cell": args.cell, "hidden": args.hidden,
            "layers": args.layers, "bidirectional": args.bidirectional, "dtype": args.dtype, "batch": args.batch,
            "max_len": args.max_len, "profile": args.profile, "mode": "forward" if args.forward else "vjp"}
    try:
        if args.forward:
            out = fw.rnn(spec, params, x, L, strategy=strategy, device="gpu")
        else:
            out, _ = fw.rnn_vjp(spec, params, x, L, cotangents(spec, args.batch, args.max_len, seed=args.seed,
                                                                dtype=args.dtype), strategy=strategy, device="gpu")
        case["kernel"] = out.kernel
    except Exception as e:  # noqa: BLE001 - XLA's refusal is the finding: report it
        case["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    # the ptxas XLA ran (the plugin's nvidia-cuda-nvcc) before any other on PATH
    ptxas = next((str(p) for p in Path(sys.prefix).glob("lib/python*/site-packages/nvidia/cuda_nvcc/bin/ptxas")),
                 None) or shutil.which("ptxas")
    for r in records:
        folder = r.pop("folder", None)
        if folder is not None:
            r.update(read_dump(folder, ptxas))
    case["programs"] = records
    if args.dump_to is None:
        shutil.rmtree(dumps, ignore_errors=True)
    else:
        case["dumps"] = str(dumps)
    return case


def describe(case: dict) -> str:
    head = (f"{case['strategy']} {case['cell']} H={case['hidden']} {case['dtype']} layers={case['layers']}"
            f"{' bidirectional' if case['bidirectional'] else ''} B={case['batch']} T={case['max_len']} "
            f"{case['profile']} {case['mode']} on a compile-only {TARGETS[case['target']]['name']}")
    if "error" in case:
        return f"{head}: NOT COMPILED: {case['error']}"
    lines = [f"{head}: kernel {case['kernel']}, {len(case['programs'])} program(s)"]
    for p in case["programs"]:
        loops = f" (loops of unknown trip count counted once: {', '.join(p['unknown_trip_loops'])})" \
            if p["unknown_trip_loops"] else ""
        lines.append(f"  {p['program']}: compiled in {p['compile_s']} s; {p['kernels_per_call']} kernels a call, "
                     f"{p['host_launches_per_call']} launches from the host (a CUDA graph counts as one){loops}")
        for k in p["triton"]:
            regs = (f", {k['registers']} registers, {k['spill_stores']} B spilled a thread" if "registers" in k
                    else ", no ptxas report (ptxas not found, or it ran past its time)")
            lines.append(f"    Triton {k['name']}: grid {k['grid'][0]}, {k['threads'][0]} threads, "
                         f"{k['shared']} B shared{regs}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gpu_aot.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=sorted(TARGETS), default="h100")
    p.add_argument("--strategy", action="append", help="JAX RNN strategy (repeatable; default every one but "
                   "cudnn_lstm)")
    p.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--profile", choices=PROFILES, default="lognormal")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--forward", action="store_true", help="the forward call only (default: vjp)")
    p.add_argument("--out", type=Path, help="also write the cases as JSON here")
    p.add_argument("--dump-to", type=Path, help="keep XLA's dumps (HLO, thunk sequences, PTX) in a new folder here")
    args = p.parse_args(argv)
    for name, v in (("--hidden", args.hidden), ("--layers", args.layers), ("--batch", args.batch),
                    ("--max-len", args.max_len)):
        if v < 1:
            p.error(f"{name} must be >= 1, got {v}")
    from adapters.jax.rnn import STRATEGIES

    strategies = args.strategy or [s for s in STRATEGIES if s != "cudnn_lstm"]
    for s in strategies:
        if s == "cudnn_lstm":
            p.error("cudnn_lstm cannot be compiled without a GPU: jax.experimental.rnn asks cuDNN for its workspace "
                    "size while lowering")
        if s not in STRATEGIES:
            p.error(f"unknown JAX RNN strategy {s!r} (one of {', '.join(STRATEGIES)})")
    if args.dump_to is not None and not args.dump_to.is_dir():
        p.error(f"--dump-to: {args.dump_to} is not a folder")
    if args.dtype == "float64":
        os.environ["JAX_ENABLE_X64"] = "1"
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no GPU here: the plugin only compiles
    try:
        import jax_plugins.xla_cuda12  # noqa: F401
    except ImportError:
        print("gpu_aot.py: JAX's CUDA plugin is missing: run it with .venv-cuda/bin/python (`make gpu-aot`)",
              file=sys.stderr)
        return 2
    cases, device = [], target_device(args.target)
    for s in strategies:
        case = run_case(args, s, device)
        print(describe(case) + (f"\n  XLA's dumps: {case['dumps']}" if "dumps" in case else ""), flush=True)
        cases.append(case)
    if args.out:
        args.out.write_text(json.dumps(cases, indent=1) + "\n")
    return 1 if any("error" in c for c in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
