"""scripts/gpu_aot.py: XLA's deviceless compile of JAX's GPU programs for a compile-only H100, with no GPU here.

Its reading of XLA's dumps is checked on hand-written dumps (kernels a call counted by hand); the compile itself runs
in .venv-cuda (`make gpu-aot` sets it up with JAX's CUDA plugin; `make test` too): concat_pallas's Pallas kernels
through XLA's own Triton and ptxas at the benchmark's point and in column blocks above H=128, against XLA's
shared-memory limit for a block."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_ALL

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_aot.py"
CUDA_PYTHON = ROOT / ".venv-cuda" / "bin" / "python"

spec = importlib.util.spec_from_file_location("gpu_aot", SCRIPT)
aot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(aot)

# a thunk sequence as XLA writes it: a while whose body holds a Triton kernel, a dynamic-slice fusion running a copy,
# and a nested while
THUNKS = """\
001: kCustomKernel [source       | next=002 (1)] fusion_a grid: [4, 1, 1] threads: [128, 1, 1]  shared_memory: 0 bytes
002: kWhile        [prev=001 (1) | next=010 (1)]
condition:
    003: kCustomKernel [source | sink] compare grid: [1, 1, 1] threads: [1, 1, 1]  shared_memory: 0 bytes
  body:
    004: kCustomKernel       [source       | next=005 (1)] lstm grid: [2, 1, 1] threads: [256, 1, 1]  shared_memory: 65536 bytes
    005: kDynamicSliceFusion [prev=004 (1) | next=007 (1)] params=1, results=1
        006: kCopy [source | sink] kCopy
    007: kWhile              [prev=005 (1) | sink        ]
    condition:
        008: kCustomKernel [source | sink] compare_1 grid: [1, 1, 1] threads: [1, 1, 1]  shared_memory: 0 bytes
      body:
        009: kCustomKernel [source | sink] inner grid: [64, 1, 1] threads: [128, 1, 1]  shared_memory: 0 bytes
010: kCopy         [prev=002 (1) | sink        ] kCopy
"""  # noqa: E501
METADATA = "\n".join(f'thunk_metadata {{\n  thunk_info {{\n    profile_annotation: "{name}"\n    thunk_id: {i}\n  }}\n'
                     f'  thunk_kind: "k"\n}}' for i, name in ((1, "fusion_a"), (2, "while"), (4, "pallas_call.6"),
                                                               (7, "while.1"), (9, "inner")))
HLO = """\
  %while = (s64[], f32[64,128]{1,0}) while(%tuple.213), condition=%region_1, body=%region_0, backend_config={"known_trip_count":{"n":"16"},"known_init_step":{"init":"0","step":"1"}}
  %while.1 = (s64[]) while(%tuple.2), condition=%c, body=%b, backend_config={"known_trip_count":{"n":"3"}}
  %pallas_call.6 = (f32[128,32,128]{2,1,0}) custom-call(%a, %b), custom_call_target="__gpu$xla.gpu.triton", api_version=API_VERSION_TYPED_FFI
"""  # noqa: E501


def test_kernels_a_call_count_each_loop_by_its_trip_count():
    tree = aot.parse_thunks(THUNKS)
    assert [t["id"] for t in tree] == [1, 2, 10]
    loop = tree[1]
    assert [t["id"] for t in loop["condition"]] == [3] and [t["id"] for t in loop["body"]] == [4, 5, 7]
    assert [t["id"] for t in loop["body"][1]["inner"]] == [6]
    assert [t["id"] for t in loop["body"][2]["body"]] == [9]
    names, trips = aot.thunk_names(METADATA), aot.trip_counts(HLO)
    assert trips == {"while": 16, "while.1": 3} and names[7] == "while.1"
    # by hand: fusion_a 1; the outer loop 16 x (lstm 1 + the fusion's copy 1 + inner loop 3 x 1 + 4 compares) and
    # 17 compares; the last copy 1
    assert aot.kernels_per_call(tree, names, trips) == (1 + 16 * (1 + 1 + 3 + 4) + 17 + 1, [])
    assert aot.kernels_per_call(tree, names, {"while": 16}) == (1 + 16 * (1 + 1 + 1 + 2) + 17 + 1, ["while.1"])
    assert aot.triton_kernels(tree, names, HLO) == [
        {"name": "lstm", "grid": [2, 1, 1], "threads": [256, 1, 1], "shared": 65536, "hlo": "pallas_call.6"}]


def test_a_triton_kernel_under_another_thunk_is_found():
    nested = """\
001: kDynamicSliceFusion [source | sink] params=1, results=1
    002: kCustomKernel [source | sink] lstm grid: [2, 1, 1] threads: [256, 1, 1]  shared_memory: 65536 bytes
"""
    found = aot.triton_kernels(aot.parse_thunks(nested), {2: "pallas_call.6"}, HLO)
    assert [(k["name"], k["hlo"]) for k in found] == [("lstm", "pallas_call.6")]


def test_a_cuda_graph_is_one_launch_from_the_host():
    """After XLA's thunk passes a command buffer holds kernels and even while loops (conditional nodes): the host
    launches it once."""
    passed = """\
000: kCommandBuffer [source       | next=010 (1)]
    001: kCustomKernel [source | sink] fusion_a grid: [4, 1, 1] threads: [128, 1, 1]  shared_memory: 0 bytes
    002: kWhile        [source | sink]
    condition:
        003: kCustomKernel [source | sink] compare grid: [1, 1, 1] threads: [1, 1, 1]  shared_memory: 0 bytes
      body:
        004: kCustomKernel [source | sink] step grid: [2, 1, 1] threads: [256, 1, 1]  shared_memory: 0 bytes
010: kWhile         [prev=000 (1) | sink]
condition:
    011: kCustomKernel [source | sink] compare_1 grid: [1, 1, 1] threads: [1, 1, 1]  shared_memory: 0 bytes
  body:
    000: kCommandBuffer [source | sink]
        012: kCustomKernel [source | sink] step_1 grid: [2, 1, 1] threads: [256, 1, 1]  shared_memory: 0 bytes
        013: kCopy [source | sink] kCopy
"""
    tree = aot.parse_thunks(passed)
    names, trips = {2: "while", 10: "while.1"}, {"while": 16, "while.1": 5}
    # the graph: one launch; the host's loop: 5 graphs and 6 compares
    assert aot.kernels_per_call(tree, names, trips, graphs=True) == (1 + 5 + 6, [])
    # what runs on the GPU: fusion_a, 16 steps and 17 compares; 5 x (step_1 + copy) and 6 compares
    assert aot.kernels_per_call(tree, names, trips) == (1 + 16 + 17 + 5 * 2 + 6, [])


def test_a_line_it_cannot_place_is_an_error():
    with pytest.raises(ValueError, match="line 2 is neither a thunk nor a while's label"):
        aot.parse_thunks("001: kCopy [source | sink] kCopy\nbranch 0:\n")
    with pytest.raises(ValueError, match="line 4 is deeper than its block"):
        aot.parse_thunks("001: kWhile [source | sink]\nbody:\n        002: kCopy [a] kCopy\n    003: kCopy [b] kCopy\n")


def test_ptxas_report():
    text = """ptxas info    : Compiling entry function 'lstm' for 'sm_90a'
ptxas info    : Function properties for lstm
    400 bytes stack frame, 520 bytes spill stores, 540 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 400 bytes cumulative stack size
ptxas info    : Function properties for lstm__1
    24 bytes stack frame, 32 bytes spill stores, 24 bytes spill loads
ptxas info    : Used 192 registers, used 1 barriers, 24 bytes cumulative stack size
"""
    assert aot.ptxas_stats(text) == {"lstm": {"registers": 255, "spill_stores": 520, "spill_loads": 540},
                                     "lstm__1": {"registers": 192, "spill_stores": 32, "spill_loads": 24}}


def test_misuse_exits_2_before_any_work():
    for argv, why in ((["--strategy", "cudnn_lstm"], "cudnn_lstm cannot be compiled without a GPU"),
                      (["--strategy", "nope"], "unknown JAX RNN strategy 'nope'"),
                      (["--hidden", "0"], "--hidden must be >= 1, got 0"), (["--target", "a100"], "invalid choice")):
        proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
        assert proc.returncode == 2 and why in proc.stderr, (argv, proc.stdout, proc.stderr)


def run_aot(tmp_path, *argv):
    if not CUDA_PYTHON.exists():
        msg = "JAX's CUDA plugin is not installed in .venv-cuda (`make gpu-aot` sets it up)"
        if REQUIRE_ALL:
            pytest.fail(msg + " (VARLEN_REQUIRE_ALL=1: none may be skipped)")
        pytest.skip(msg)
    out = tmp_path / "aot.json"
    proc = subprocess.run([str(CUDA_PYTHON), str(SCRIPT), *argv, "--out", str(out)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_concat_pallas_compiles_for_an_h100(tmp_path):
    """The benchmark's point (LSTM H=128 float32, B=64 T=128 lognormal: a grid of 20 rows) and H=256 in column
    blocks: one program each, its two Triton kernels (forward and gradient loops) on ceil(20/16) = 2 blocks of
    256 threads, within the 227 KB a block may have: one 128x128 float32 tile of W_hh (64 KB) at H=128, 64x64 ones
    (16 KB) at H=256 (as one tile, 256 KB: XLA refuses it); at H=512 concat_rows' scans instead. The masked scan it
    replaces runs hundreds of kernels a call where it runs tens; scan_graph's program is one CUDA graph, loops
    included."""
    cases, text = run_aot(tmp_path, "--strategy", "concat_pallas", "--strategy", "scan_unroll8", "--strategy",
                          "scan_graph")
    pallas, scan, graph = cases
    assert pallas["kernel"] == "pallas-triton 3xtf32 rows[20x128]", text
    (program,) = pallas["programs"]
    shared = {k["name"]: k["shared"] for k in program["triton"]}
    assert shared == {"lstm": 65536, "lstm__1": 65536}, text
    assert all(k["grid"][0] == 2 and k["threads"][0] == 256 for k in program["triton"]), text
    assert all(k["registers"] <= 255 for k in program["triton"]), text
    (scan_program,) = scan["programs"]
    assert program["kernels_per_call"] < 50 and scan_program["kernels_per_call"] > 5 * 128, text
    # scan_graph's premise: XLA puts its while loops in the CUDA graph too (scan_unroll8's host runs them)
    assert graph["programs"][0]["host_launches_per_call"] == 1 < scan_program["host_launches_per_call"], text
    (wide,), text = run_aot(tmp_path, "--strategy", "concat_pallas", "--hidden", "256")
    assert wide["kernel"] == "pallas-triton 3xtf32 tiles[64] rows[20x128]", text
    assert {k["shared"] for k in wide["programs"][0]["triton"]} == {16384}, text
    # above 256 hidden units concat_rows' scans run the grid (at H=512 the kernels took 298 s to compile here)
    (big,), text = run_aot(tmp_path, "--strategy", "concat_pallas", "--hidden", "512")
    assert big["kernel"] == "xla-scan unroll8 rows[20x128]" and not big["programs"][0]["triton"], text
    # every cell's kernels: GRU in float64 (Triton's fp64 dot), 2 layers both ways, H=129 in 4 column blocks of 64
    (gru,), text = run_aot(tmp_path, "--strategy", "concat_pallas", "--cell", "gru", "--dtype", "float64",
                           "--hidden", "129", "--layers", "2", "--bidirectional")
    assert gru["kernel"] == "pallas-triton tiles[64] rows[20x128]", text
    kernels = gru["programs"][0]["triton"]
    assert len(kernels) == 8 and all(k["shared"] <= aot.SMEM_OPTIN for k in kernels), text  # 2 a layer and way
    # on equal lengths both run the masked scan's own program: each case compiles it afresh (the adapter is one
    # instance a process, its compiled functions dropped between cases), none is left with no program
    cases, text = run_aot(tmp_path, "--profile", "equal", "--strategy", "bucketed", "--strategy", "concat_rows")
    assert [len(c["programs"]) for c in cases] == [1, 1], text
    assert cases[0]["programs"][0]["kernels_per_call"] == cases[1]["programs"][0]["kernels_per_call"], text
