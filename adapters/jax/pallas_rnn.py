"""Pallas kernels of the JAX "concat_pallas" strategy: the two loops of `reset_scan` (adapters/jax/rnn.py), the
LSTM's forward scan over a time-major grid and the reverse scan of its written-out gradient, each one kernel in
which a block of rows runs every step of the grid (a persistent loop: no launch per step, no while loop on the host).

Why: on a GPU an RNN step at B=64 H=128 is latency-bound. XLA runs each step of a `lax.scan` as a few kernels (a
cuBLAS GEMM, fusions) that the host launches one by one, ~15 us a step for "scan_unroll8" on an H200 (forward +
backward). Here one program holds a block of ROW_BLOCK rows and walks the steps itself: per step it loads the
step's input projection, multiplies the carried h by W_hh (W_hh^T streamed from L2 every step: 128 x 512 float32 is
more than a thread block's registers or shared memory), applies the gates and stores what the gradient needs.

Layout and padding: rows are padded to a multiple of ROW_BLOCK (rows of 0 input, cut off after), the hidden size up
to a power of two >= 16 (Triton's tensors are powers of two in size; `tl.dot` needs K, N >= 16) with zero weights,
under which a padded unit stays exactly 0 forward (gates 0.5, g = 0, c = 0) and gets 0 gradient backward.

Precision: float32 products on the GPU use `TF32_TF32_F32_X3` (3xTF32: each operand split into two TF32 parts,
three tensor-core products, float32 accumulation; ~2^-21 relative per product, where float32's is 2^-24), because
Triton's full-float32 `tl.dot` runs on the FMA units with its operands in registers: compiled offline for sm_90 (pip
triton 3.9) the kernel spilled 27 KB a thread at 4 warps, where 3xTF32 at 8 warps spilled 252 bytes.
`tests/test_pallas_rnn.py` emulates 3xTF32 (`lax.reduce_precision` to TF32's 10 mantissa bits) inside the kernel on
the CPU and checks an H=128, 128-step grid against the float64 reference within the float32 tolerance. float64
products are exact (Triton's fp64 `tl.dot`). On the CPU the kernels run in Pallas's interpret mode (no Triton),
for the tests.
"""
from __future__ import annotations

from functools import cache

#: rows per program: tl.dot's smallest M
ROW_BLOCK = 16
#: Triton's warps per program (8: 3xTF32's operands fit in registers; see the module docstring)
NUM_WARPS = 8
#: the float32 products' algorithm on the GPU (a `jax.lax.DotAlgorithmPreset` name); float64 takes the default
F32_ALGORITHM = "TF32_TF32_F32_X3"


def padded_size(n: int, lo: int = 16) -> int:
    """The power of two >= max(n, lo): a hidden size as the kernels hold it."""
    return max(lo, 1 << max(0, (n - 1).bit_length()))


def kernel_name(dtype: str, interpret: bool) -> str:
    """What the kernels run as, for the records' kernel field."""
    if interpret:
        return "pallas-interpret"
    return "pallas-triton 3xtf32" if dtype == "float32" else "pallas-triton"


@cache
def lstm_loops(jax, interpret: bool, dot=None):
    """(forward, backward) of the LSTM reset scan, as `reset_scan` defines them:
    forward(xw [S,R,4H], w_hh [4H,H], b_hh [4H], keep [S,R] bool) -> (h, c, tanh c [S,R,H], gates [S,R,4H]:
    i, f, g, o after their activations);
    backward(dh, dc, tanh c, gates, c_prev [S,R,H or 4H], keep, w_hh) -> d of each slot's pre-activations [S,R,4H].
    `interpret`: Pallas's interpret mode (CPU); otherwise Triton. `dot(a, b)`: the product inside the kernels (tests
    pass an emulation); default: float32 in F32_ALGORITHM on Triton, HIGHEST in interpret mode; float64 exact."""
    jnp, lax = jax.numpy, jax.lax
    from jax.experimental import pallas as pl

    def product(a, b):
        if dot is not None:
            return dot(a, b)
        if interpret:
            return jnp.dot(a, b, precision=lax.Precision.HIGHEST)
        if a.dtype == jnp.float32:
            return jnp.dot(a, b, precision=getattr(lax.DotAlgorithmPreset, F32_ALGORITHM))
        return jnp.dot(a, b)

    def call(kernel, S: int, Rp: int, ins: list, outs: list, params: list):
        """pallas_call over row blocks: `ins`/`outs` give each array's last dimension (None: a whole parameter)."""
        if interpret:
            extra = {"interpret": True}
        else:
            from jax.experimental.pallas import triton as pltr
            extra = {"compiler_params": pltr.CompilerParams(num_warps=NUM_WARPS, num_stages=1)}

        def rows(F):
            return pl.BlockSpec((S, ROW_BLOCK, F), lambda r: (0, r, 0))

        def whole(shape):
            return pl.BlockSpec(shape, lambda r: (0,) * len(shape))

        dt = params[0].dtype
        specs = [rows(F) if isinstance(F, int) else whole(F) for F in ins]
        return pl.pallas_call(kernel, grid=(Rp // ROW_BLOCK,), in_specs=specs, out_specs=[rows(F) for F in outs],
                              out_shape=[jax.ShapeDtypeStruct((S, Rp, F), dt) for F in outs], **extra)(*params)

    def sigmoid(v):
        return 1 / (1 + jnp.exp(-v))

    def shapes(a):
        S, R, G = a.shape
        H = G // 4
        return S, R, H, padded_size(H), -(-R // ROW_BLOCK) * ROW_BLOCK

    def pad(a, S, R, H, Hp, Rp, parts: int = 1):
        """[S, R, parts*H] -> [S, Rp, parts*Hp], zeros in what is added."""
        a = a.reshape(S, R, parts, H)
        return jnp.pad(a, [(0, 0), (0, Rp - R), (0, 0), (0, Hp - H)]).reshape(S, Rp, parts * Hp)

    def cut(a, S, R, H, Hp, parts: int = 1):
        return a[:, :R].reshape(S, R, parts, Hp)[..., :H].reshape(S, R, parts * H)

    def mask(keep, Rp, dt):
        return jnp.pad(keep, [(0, 0), (0, Rp - keep.shape[1])]).astype(dt)[..., None]

    def weights(w_hh, H, Hp):
        """w_hh [4H, H] -> [4Hp, Hp], each gate's block padded with zeros."""
        return jnp.pad(w_hh.reshape(4, H, H), [(0, 0), (0, Hp - H), (0, Hp - H)]).reshape(4 * Hp, Hp)

    def forward(xw, w_hh, b_hh, keep):
        S, R, H, Hp, Rp = shapes(xw)
        dt = xw.dtype

        def kernel(x_ref, k_ref, u_ref, b_ref, h_ref, c_ref, tc_ref, a_ref):
            def step(t, carry):
                on = k_ref[t] > 0  # [ROW_BLOCK, 1]: False at a sequence's first slot
                h, c = (jnp.where(on, s, 0) for s in carry)
                z = [x_ref[t, :, pl.ds(j * Hp, Hp)] + product(h, u_ref[:, pl.ds(j * Hp, Hp)])
                     + b_ref[:, pl.ds(j * Hp, Hp)] for j in range(4)]
                i, f, g, o = sigmoid(z[0]), sigmoid(z[1]), jnp.tanh(z[2]), sigmoid(z[3])
                c = f * c + i * g
                tc = jnp.tanh(c)
                h = o * tc
                h_ref[t], c_ref[t], tc_ref[t] = h, c, tc
                for j, gate in enumerate((i, f, g, o)):
                    a_ref[t, :, pl.ds(j * Hp, Hp)] = gate
                return h, c

            zero = jnp.zeros((ROW_BLOCK, Hp), dt)
            lax.fori_loop(0, S, step, (zero, zero))

        u = weights(w_hh, H, Hp).T  # [Hp, 4Hp]: h @ u is W_hh h
        b = jnp.pad(b_hh.reshape(4, H), [(0, 0), (0, Hp - H)]).reshape(1, 4 * Hp)
        params = [pad(xw, S, R, H, Hp, Rp, 4), mask(keep, Rp, dt), u, b]
        h, c, tc, a = call(kernel, S, Rp, [4 * Hp, 1, (Hp, 4 * Hp), (1, 4 * Hp)], [Hp, Hp, Hp, 4 * Hp], params)
        return cut(h, S, R, H, Hp), cut(c, S, R, H, Hp), cut(tc, S, R, H, Hp), cut(a, S, R, H, Hp, 4)

    def backward(dh, dc, tc, gates, c_prev, keep, w_hh):
        S, R, H, Hp, Rp = shapes(gates)
        dt = gates.dtype

        def kernel(gh_ref, gc_ref, tc_ref, a_ref, cp_ref, k_ref, w_ref, dz_ref):
            def step(n, carry):
                t = S - 1 - n
                i, f, g, o = (a_ref[t, :, pl.ds(j * Hp, Hp)] for j in range(4))
                tc = tc_ref[t]
                dh = gh_ref[t] + carry[0]
                dc = gc_ref[t] + carry[1] + dh * o * (1 - tc * tc)
                dz = (dc * g * i * (1 - i), dc * cp_ref[t] * f * (1 - f), dc * i * (1 - g * g),
                      dh * tc * o * (1 - o))
                back = product(dz[0], w_ref[pl.ds(0, Hp), :])
                for j in range(4):
                    dz_ref[t, :, pl.ds(j * Hp, Hp)] = dz[j]
                    if j:
                        back = back + product(dz[j], w_ref[pl.ds(j * Hp, Hp), :])
                on = k_ref[t] > 0  # a reset passes nothing back
                return jnp.where(on, back, 0), jnp.where(on, dc * f, 0)

            zero = jnp.zeros((ROW_BLOCK, Hp), dt)
            lax.fori_loop(0, S, step, (zero, zero))

        params = [pad(dh, S, R, H, Hp, Rp), pad(dc, S, R, H, Hp, Rp), pad(tc, S, R, H, Hp, Rp),
                  pad(gates, S, R, H, Hp, Rp, 4), pad(c_prev, S, R, H, Hp, Rp), mask(keep, Rp, dt),
                  weights(w_hh, H, Hp)]
        (dz,) = call(kernel, S, Rp, [Hp, Hp, Hp, 4 * Hp, Hp, 1, (4 * Hp, Hp)], [4 * Hp], params)
        return cut(dz, S, R, H, Hp, 4)

    return forward, backward
