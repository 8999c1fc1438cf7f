"""JAX "concat_pallas": concat_rows' grid with its two loops as Pallas kernels (adapters/jax/pallas_rnn.py).

Its kernels are Triton's on a GPU; here (no GPU) they run in Pallas's interpret mode, past the strategy's
precondition, and their Triton lowering is built for CUDA without a device (`lowering_platforms`), which is where
Pallas refuses what Triton cannot take (a primitive it does not lower, a tensor whose size is not a power of two).
The GPU itself runs them in `scripts/gpu-check.sh` (the equivalence matrix, the gates and the goal's sweep)."""
from __future__ import annotations

import functools

import numpy as np
import pytest

import adapters
from adapters.spec import RnnSpec, init_params
from harness.compare import close
from harness.data import padded
from harness.tolerances import tolerance
from tests.conftest import on_device, require
from tests.rnn_cases import against_reference

#: lengths whose grid packs several sequences into some rows (resets inside a row), with an empty row
LENGTHS = np.array([64, 60] + [20] * 6 + [2] * 7 + [0])
T = 64


def unit_vjp(fw, spec, lengths, side):
    """The strategy's own vjp entry point on the CPU, past its precondition (interpret mode)."""
    from adapters.jax import rnn as jax_rnn

    algo = jax_rnn.STRATEGIES["concat_pallas"]
    return lambda params, x, cot: algo.vjp(fw, spec, params, x, lengths, cot, side, "cpu")


def test_precondition_names_the_gpu():
    require("jax")
    fw = adapters.get("jax")
    assert "GPU" in fw.why_not("rnn", "concat_pallas", cell="lstm", device="cpu", dtype="float32")
    for cell in ("lstm", "gru", "rnn"):
        for dtype in ("float32", "float64"):
            assert fw.why_not("rnn", "concat_pallas", cell=cell, device="gpu", dtype=dtype) is None


@pytest.mark.parametrize("cell,side,layers,bi,dtype,hidden", [("lstm", "left", 2, True, "float32", 5),
                                                              ("lstm", "right", 1, False, "float64", 4),
                                                              ("lstm", "right", 2, True, "float64", 17),
                                                              ("lstm", "left", 1, False, "float32", 16),
                                                              ("gru", "right", 2, True, "float64", 5),
                                                              ("gru", "left", 1, False, "float32", 16),
                                                              ("rnn", "left", 2, True, "float64", 3),
                                                              ("rnn", "right", 1, False, "float32", 17)])
def test_concat_pallas_exact_in_interpret_mode(cell, side, layers, bi, dtype, hidden):
    """Every quantity against the float64 reference, every cell: NaN in the padding, a zero-length row, sequences
    sharing grid rows, stacked and bidirectional layers, hidden sizes padded to the kernels' power of two (3, 4, 5
    -> 16, 17 -> 32) or not (16), both dtypes. The kernel name says interpret mode and the grid."""
    require("jax")
    fw = adapters.get("jax")
    spec = RnnSpec(cell, input_size=3, hidden_size=hidden, num_layers=layers, bidirectional=bi)
    bad, out = against_reference(fw, spec, LENGTHS, T, side=side, dtype=dtype, seed=3,
                                 run=unit_vjp(fw, spec, LENGTHS, side))
    assert not bad, f"concat_pallas {cell} {side} {layers}x{'bi' if bi else 'uni'} {dtype} H={hidden}: {bad}"
    assert out.kernel.startswith("pallas-interpret rows["), out.kernel
    rows = int(out.kernel.split("rows[")[1].split("x")[0])
    assert rows < np.count_nonzero(LENGTHS), out.kernel  # sequences share rows: resets inside the kernels' loop


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_concat_pallas_forward_alone_matches_the_reference(cell):
    """The forward call without a gradient (`rnn_forward`'s path: the kernels' primal, which drops what the
    gradient would need) against the reference: outputs, h_n and c_n."""
    require("jax")
    from adapters.jax import rnn as jax_rnn

    fw = adapters.get("jax")
    spec = RnnSpec(cell, input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
    x = padded(LENGTHS, T, (3,), side="left", seed=4, dtype="float64", fill=np.nan)
    params = init_params(spec, seed=4, dtype="float64")
    out = jax_rnn.STRATEGIES["concat_pallas"].forward(fw, spec, params, fw.asarray(x), LENGTHS, "left", "cpu")
    want = adapters.get("numpy").rnn(spec, params, x, LENGTHS, side="left")
    tol = tolerance("float64")
    for name in ("outputs", "h_n", "c_n"):
        got, ref = getattr(out, name), getattr(want, name)
        if ref is None:
            assert got is None, name
            continue
        ok, err = close(fw.to_numpy(got), ref, tol)
        assert ok, f"{cell} {name}: {err}"
    assert out.kernel.startswith("pallas-interpret rows["), out.kernel


def test_concat_pallas_equal_lengths_runs_its_grid():
    """Equal lengths (one sequence per row over every step) still run the kernels, not the masked scan (which
    concat_rows' LSTM falls back to there)."""
    require("jax")
    fw = adapters.get("jax")
    spec = RnnSpec("lstm", input_size=3, hidden_size=4)
    L = np.full(5, 9)
    bad, out = against_reference(fw, spec, L, 9, dtype="float64", run=unit_vjp(fw, spec, L, "right"))
    assert not bad, bad
    assert out.kernel == "pallas-interpret rows[5x9]", out.kernel


def test_hidden_sizes_above_256_run_concat_rows_scans():
    """Above MAX_HIDDEN (256 padded) the kernels' unrolled tiles take minutes to compile and spill heavily: there
    the strategy runs concat_rows' scans on the same grid, exact, and its kernel name and its programs say so; at 256
    the kernels still run. LSTM on equal lengths, where the two differ most: concat_rows' LSTM runs the masked scan
    there, the kernels their grid."""
    require("jax")
    from adapters.jax.pallas_rnn import MAX_HIDDEN, fits

    assert MAX_HIDDEN == 256 and fits(256) and not fits(257)
    fw = adapters.get("jax")
    L = np.array([3, 3])
    for hidden, kernel, program in ((257, "xla-scan rows[2x3]", ("scan", "full")),
                                    (256, "pallas-interpret tiles[64] rows[2x3]", ("grid", 2, 3))):
        spec = RnnSpec("lstm", input_size=2, hidden_size=hidden)
        bad, out = against_reference(fw, spec, L, 3, dtype="float64", run=unit_vjp(fw, spec, L, "right"))
        assert not bad and out.kernel == kernel, (hidden, bad, out.kernel)
        programs = fw.programs("rnn", "concat_pallas", spec, L, 3, vjp=True)
        assert programs == {program}, (hidden, programs)


def tf32(jax, a):
    """a rounded to TF32 (float32's exponent, 10 mantissa bits), as a tensor core reads it."""
    return jax.lax.reduce_precision(a, exponent_bits=8, mantissa_bits=10)


def emulated_dot(jax, terms: int, a, b):
    """A float32 product as Triton's `tl.dot` computes it on tensor cores: 3xTF32 (terms=3: each operand split into
    a TF32 high part and a TF32 rest, hi*hi + hi*lo + lo*hi) or plain TF32 (terms=1). Products of TF32 parts are
    exact in float32; the sums are float32."""
    jnp = jax.numpy
    dot = functools.partial(jnp.dot, precision=jax.lax.Precision.HIGHEST)
    a_hi, b_hi = tf32(jax, a), tf32(jax, b)
    if terms == 1:
        return dot(a_hi, b_hi)
    a_lo, b_lo = tf32(jax, a - a_hi), tf32(jax, b - b_hi)
    return dot(a_lo, b_hi) + dot(a_hi, b_lo) + dot(a_hi, b_hi)


def test_float32_products_in_3xtf32_are_as_accurate_as_float32(monkeypatch):
    """The GPU kernels multiply float32 in 3xTF32 (adapters/jax/pallas_rnn.py says why). Emulated inside the kernels
    on the benchmark's size (H=128, 128 steps, rows sharing grid rows), every quantity is within float32's
    tolerance of the float64 reference and its error at most 1.5x that of full float32 products (measured: equal
    to 3 digits but for grad_x, 0.85x); plain TF32, emulated the same way, is > 100x off float32's (measured 136x
    on grad_x to 410x on c_n: the emulation does change the products)."""
    require("jax")
    from adapters.jax import pallas_rnn

    fw = adapters.get("jax")
    original = pallas_rnn.rnn_loops
    spec = RnnSpec("lstm", input_size=32, hidden_size=128)
    L = np.array([128, 100, 77, 60, 41, 33, 25, 20, 12, 9, 5, 3])
    errors = {}
    for name, terms in [("float32", None), ("3xtf32", 3), ("tf32", 1)]:
        dot = None if terms is None else functools.partial(emulated_dot, fw.jax, terms)
        monkeypatch.setattr(pallas_rnn, "rnn_loops",
                            lambda jax, cell, interpret, d=dot: original(jax, cell, interpret, d))
        errors[name] = {}
        bad, _ = against_reference(fw, spec, L, 128, dtype="float32", seed=5, run=unit_vjp(fw, spec, L, "right"),
                                   errors=errors[name])
        if name != "tf32":
            assert not bad, f"{name} products: {bad}"
    quantities = ("outputs", "h_n", "c_n", "grad_x", "grad_params")
    assert all(errors["float32"][q] > 0 for q in quantities), errors["float32"]
    worst = max(errors["3xtf32"][q] / errors["float32"][q] for q in quantities)
    assert worst <= 1.5, f"3xTF32's errors over float32's: {worst:.2f} ({errors})"
    assert min(errors["tf32"][q] / errors["float32"][q] for q in quantities) > 100, errors


@pytest.mark.parametrize("cell,side,dtype,hidden", [("lstm", "left", "float64", 40), ("lstm", "right", "float32", 17),
                                                     ("gru", "right", "float64", 17), ("gru", "left", "float32", 33),
                                                     ("rnn", "right", "float64", 40), ("rnn", "left", "float32", 17)])
def test_hidden_units_in_column_blocks_are_exact(monkeypatch, cell, side, dtype, hidden):
    """A padded hidden size above the kernels' one-block size runs in column blocks (W_hh's products in tiles, the
    states as tuples of blocks: what H > 128 runs on a GPU). Here the blocks are 16 units wide (17 and 33 -> 2 and 4
    blocks of a padded 32 and 64, 40 -> 4 of 64): every quantity against the float64 reference, 2 layers
    bidirectional, NaN in the padding, a zero-length row, sequences sharing grid rows."""
    require("jax")
    from adapters.jax import pallas_rnn

    original = pallas_rnn.rnn_loops
    monkeypatch.setattr(pallas_rnn, "rnn_loops",
                        lambda jax, cell, interpret: original(jax, cell, interpret, None, (16, 16)))
    fw = adapters.get("jax")
    spec = RnnSpec(cell, input_size=3, hidden_size=hidden, num_layers=2, bidirectional=True)
    bad, _ = against_reference(fw, spec, LENGTHS, T, side=side, dtype=dtype, seed=6,
                               run=unit_vjp(fw, spec, LENGTHS, side))
    assert not bad, f"concat_pallas in 16-unit blocks, {cell} {side} {dtype} H={hidden}: {bad}"


@pytest.mark.parametrize("cell,dtype,hidden", [("lstm", "float32", 256), ("gru", "float64", 129)])
def test_jax_concat_pallas_in_column_blocks_on_the_device(device, cell, dtype, hidden):
    """On a GPU (`--device gpu`, `scripts/gpu-check.sh`'s gates): hidden sizes above 128 through Triton's kernels
    in 64-unit column blocks, every quantity against the reference within the GPU's tolerance (the blocks'
    arithmetic is checked in interpret mode above; this is Triton's compile and launch of them). The kernel name
    says the tiles."""
    if device != "gpu":
        pytest.skip("Triton's kernels run on a GPU only (pytest --device gpu); the blocks' arithmetic is checked "
                    "in interpret mode by test_hidden_units_in_column_blocks_are_exact")
    require("jax")
    fw = on_device(adapters.get("jax"), device)
    spec = RnnSpec(cell, input_size=8, hidden_size=hidden)
    L = np.array([24, 20, 9, 3, 3, 1, 0])
    bad, out = against_reference(fw, spec, L, 24, dtype=dtype, seed=7, strategy="concat_pallas", device=device)
    assert not bad, f"concat_pallas {cell} {dtype} H={hidden} on the GPU: {bad}"
    assert out.kernel.startswith("pallas-triton") and " tiles[64] rows[" in out.kernel, out.kernel


def test_column_blocks_and_the_kernel_name():
    from adapters.jax.pallas_rnn import column_block, kernel_name

    assert [column_block(Hp) for Hp in (16, 128, 256, 1024)] == [16, 128, 64, 64]
    assert column_block(64, (32, 16)) == 16
    for bad in ((128, 48), (128, 8), (32, 64)):
        with pytest.raises(ValueError, match="column blocks"):
            column_block(256, bad)
    assert kernel_name("float32", False, 128) == "pallas-triton 3xtf32"
    assert kernel_name("float32", False, 129) == "pallas-triton 3xtf32 tiles[64]"
    assert kernel_name("float64", False, 256) == "pallas-triton tiles[64]"
    assert kernel_name("float64", True, 5) == "pallas-interpret"


@pytest.mark.parametrize("cell,hidden,rows,steps,dtype,tile,blocks", [
    ("lstm", 128, 20, 128, "float32", 128, 1), ("lstm", 5, 3, 7, "float32", 16, 1),
    ("lstm", 128, 8, 96, "float64", 128, 1), ("lstm", 256, 20, 16, "float32", 64, 4),
    ("gru", 128, 20, 128, "float32", 128, 1), ("gru", 5, 3, 7, "float64", 16, 1),
    ("gru", 200, 20, 16, "float64", 64, 4), ("rnn", 128, 20, 128, "float32", 128, 1),
    ("rnn", 5, 3, 7, "float64", 16, 1), ("rnn", 129, 20, 16, "float32", 64, 4)])
def test_kernels_lower_to_triton_for_cuda(monkeypatch, capsys, cell, hidden, rows, steps, dtype, tile, blocks):
    """The forward and the gradient, jitted for CUDA on this CPU machine (`lowering_platforms`): Pallas lowers
    both kernels to Triton (two Triton custom calls), i.e. every primitive in them has a Triton lowering and every
    tensor they load or store is a power of two in size. The benchmark's grid (H=128), a hidden size that is padded
    (5 -> 16), float64, and hidden sizes above 128 (padded to 256), which run in 64-unit column blocks.
    In the Triton modules (Pallas's debug print) every product is a [16, tile] block by a [tile, tile] tile of
    W_hh, G * blocks^2 of them a step in each kernel (blocks: the padded hidden size's column blocks), float32 ones
    in 3xTF32. One H=256 gate slice as one tile (256 x 256 float32: 256 KB, staged in shared memory) would not fit
    an H100's thread block (227 KB).
    Not checked here: Triton's own compile to PTX (XLA's, on the GPU)."""
    require("jax")
    fw = adapters.get("jax")  # jax_enable_x64 and full-precision matmuls, as the adapter sets them
    jax, jnp = fw.jax, fw.jnp
    from jax.experimental import pallas as pl

    from adapters.jax.pallas_rnn import GATES, rnn_loops
    from adapters.jax.rnn import reset_scan

    monkeypatch.setattr(pl, "pallas_call", functools.partial(pl.pallas_call, debug=True))
    scan, G = reset_scan(jax, cell, 1, rnn_loops(jax, cell, False)), GATES[cell]

    def loss(xw, w, b, keep, *cots):
        return sum(jnp.sum(s * c) for s, c in zip(scan(xw, w, b, keep), cots, strict=True))

    def spec(*shape):
        return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))

    cots = [spec(steps, rows, hidden)] * (2 if cell == "lstm" else 1)
    args = (spec(steps, rows, G * hidden), spec(G * hidden, hidden), spec(G * hidden),
            jax.ShapeDtypeStruct((steps, rows), jnp.bool_), *cots)
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(*args).lower(lowering_platforms=("cuda",))
    assert lowered.as_text().count("xla.gpu.triton") == 2
    modules = capsys.readouterr().out.split("The Triton module for pallas_call")[1:]
    assert len(modules) == 2
    f = "f32" if dtype == "float32" else "f64"
    want = f"tensor<16x{tile}x{f}> * tensor<{tile}x{tile}x{f}> -> tensor<16x{tile}x{f}>"
    for module in modules:
        dots = [line for line in module.splitlines() if " tt.dot " in line]
        assert len(dots) == G * blocks ** 2, (len(dots), dots[:2])
        assert all(want in d for d in dots), dots[:2]
        assert all(("inputPrecision = tf32x3" in d) == (dtype == "float32") for d in dots), dots[:2]
