"""Pallas kernels of the JAX "concat_pallas" strategy: the two loops of `reset_scan` (adapters/jax/rnn.py), the
forward scan over a time-major grid and the reverse scan of its written-out gradient (LSTM, GRU, tanh RNN), each one
kernel in which a block of rows runs every step of the grid (a persistent loop: no launch per step, no while loop
on the host).

Why: on a GPU an RNN step at B=64 H=128 is latency-bound. XLA runs each step of a `lax.scan` as a few kernels (a
cuBLAS GEMM, fusions) that the host launches one by one, ~15 us a step for "scan_unroll8" on an H200 (forward +
backward). Here one program holds a block of ROW_BLOCK rows and walks the steps itself: per step it loads the
step's input projection, multiplies the carried h by W_hh (W_hh^T streamed from L2 every step: 128 x 512 float32 is
more than a thread block's registers or shared memory), applies the gates and stores what the gradient needs.

Layout and padding: rows are padded to a multiple of ROW_BLOCK (rows of 0 input, cut off after), the hidden size up
to a power of two >= 16 (Triton's tensors are powers of two in size; `tl.dot` needs K, N >= 16) with zero weights,
under which a padded unit stays exactly 0 forward (LSTM: gates 0.5, g = 0, c = 0; GRU: n = 0, h = h/2 from 0; tanh
RNN: tanh 0) and gets 0 gradient backward.

Precision: float32 products on the GPU use `TF32_TF32_F32_X3` (3xTF32: each operand split into two TF32 parts,
three tensor-core products, float32 accumulation; ~2^-21 relative per product, where float32's is 2^-24), because
Triton's full-float32 `tl.dot` runs on the FMA units with its operands in registers: compiled offline for sm_90 (pip
triton 3.9) the kernel spilled 27 KB a thread at 4 warps, where 3xTF32 at 8 warps spilled 252 bytes (the
gradient's kernel 44; float64 876 and 96). Above H=128 the kernels hold too much a thread: at H=256 the same compile
spilled ~39 KB (still exact, but slow; the benchmarks run H=128).
`tests/test_pallas_rnn.py` emulates 3xTF32 (`lax.reduce_precision` to TF32's 10 mantissa bits) inside the kernels
on the CPU: on an H=128, 128-step grid every quantity's error against the float64 reference is that of full float32
products (equal to 3 digits, grad_x 0.85x of it), where plain TF32's is 136-410x larger. float64 products are exact
(Triton's fp64 `tl.dot`). On the CPU the kernels run in Pallas's interpret mode (no Triton),
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


#: per cell: the gates of its input projection xw and of W_hh
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


@cache
def rnn_loops(jax, cell: str, interpret: bool, dot=None):
    """(forward, backward) of `reset_scan`'s two loops for `cell` (PyTorch gate order and GRU formula):
    forward(xw [S,R,G*H], w_hh [G*H,H], b_hh [G*H], keep [S,R] bool) -> what `reset_scan`'s forward scan saves: LSTM
    (h, c, tanh c, gates), GRU (h, gates), tanh RNN (h,), each [S,R,H] or gates [S,R,4H];
    backward(cotangents (of h, and of c for the LSTM), saved (as forward returned it), prev (c_prev for the LSTM,
    h_prev for the GRU, None), keep, w_hh) -> (d xw, d (W_hh h + b_hh)) [S,R,G*H] (the same array but for the GRU's
    n gate), from which `reset_scan` sums the parameters' gradients after the loop.
    `interpret`: Pallas's interpret mode (CPU); otherwise Triton. `dot(a, b)`: the product inside the kernels (tests
    pass an emulation); default: float32 in F32_ALGORITHM on Triton, HIGHEST in interpret mode; float64 exact."""
    jnp, lax = jax.numpy, jax.lax
    from jax.experimental import pallas as pl

    G = GATES[cell]

    def product(a, b):
        if dot is not None:
            return dot(a, b)
        if interpret:
            return jnp.dot(a, b, precision=lax.Precision.HIGHEST)
        if a.dtype == jnp.float32:
            return jnp.dot(a, b, precision=getattr(lax.DotAlgorithmPreset, F32_ALGORITHM))
        return jnp.dot(a, b)

    def call(kernel, S: int, Rp: int, ins: list, outs: list, params: list):
        """pallas_call over row blocks: `ins`/`outs` give each array's last dimension (a tuple: a whole array)."""
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

    class Grid:
        """A grid of S steps, R rows, hidden size H, and its padded sizes: Hp (hidden), Rp (rows)."""

        def __init__(self, S: int, R: int, H: int):
            self.S, self.R, self.H = S, R, H
            self.Hp, self.Rp = padded_size(H), -(-R // ROW_BLOCK) * ROW_BLOCK

        def pad(self, a, parts: int = 1):
            """[S, R, parts*H] -> [S, Rp, parts*Hp], zeros in what is added."""
            a = a.reshape(self.S, self.R, parts, self.H)
            pads = [(0, 0), (0, self.Rp - self.R), (0, 0), (0, self.Hp - self.H)]
            return jnp.pad(a, pads).reshape(self.S, self.Rp, parts * self.Hp)

        def cut(self, a, parts: int = 1):
            return a[:, :self.R].reshape(self.S, self.R, parts, self.Hp)[..., :self.H].reshape(
                self.S, self.R, parts * self.H)

        def mask(self, keep, dt):
            return jnp.pad(keep, [(0, 0), (0, self.Rp - self.R)]).astype(dt)[..., None]

        def weights(self, w_hh):
            """w_hh [G*H, H] -> [G*Hp, Hp], each gate's block padded with zeros."""
            H, Hp = self.H, self.Hp
            return jnp.pad(w_hh.reshape(G, H, H), [(0, 0), (0, Hp - H), (0, Hp - H)]).reshape(G * Hp, Hp)

        def bias(self, b_hh):
            return jnp.pad(b_hh.reshape(G, self.H), [(0, 0), (0, self.Hp - self.H)]).reshape(1, G * self.Hp)

    def part(ref, t, j: int, Hp: int):
        """Gate j of slot t of a [S, rows, gates*Hp] block."""
        return ref[t, :, pl.ds(j * Hp, Hp)]

    def loop(S: int, Hp: int, dt, step, n: int, reverse: bool = False):
        """Run step(t, carry) over t = 0..S-1 (or back) from `n` zero states [ROW_BLOCK, Hp]."""
        zero = tuple(jnp.zeros((ROW_BLOCK, Hp), dt) for _ in range(n))
        lax.fori_loop(0, S, (lambda i, c: step(S - 1 - i, c)) if reverse else step, zero)

    def forward(xw, w_hh, b_hh, keep):
        S, R, GH = xw.shape
        g, dt = Grid(S, R, GH // G), xw.dtype
        Hp, sigmoid = g.Hp, jax.nn.sigmoid

        def lstm(x_ref, k_ref, u_ref, b_ref, h_ref, c_ref, tc_ref, a_ref):
            def step(t, carry):
                on = k_ref[t] > 0  # [ROW_BLOCK, 1]: False at a sequence's first slot
                h, c = (jnp.where(on, s, 0) for s in carry)
                z = [part(x_ref, t, j, Hp) + product(h, u_ref[:, pl.ds(j * Hp, Hp)]) + b_ref[:, pl.ds(j * Hp, Hp)]
                     for j in range(4)]
                i, f, gg, o = sigmoid(z[0]), sigmoid(z[1]), jnp.tanh(z[2]), sigmoid(z[3])
                c = f * c + i * gg
                tc = jnp.tanh(c)
                h = o * tc
                h_ref[t], c_ref[t], tc_ref[t] = h, c, tc
                for j, a in enumerate((i, f, gg, o)):
                    a_ref[t, :, pl.ds(j * Hp, Hp)] = a
                return h, c

            loop(S, Hp, dt, step, 2)

        def gru(x_ref, k_ref, u_ref, b_ref, h_ref, a_ref):
            def step(t, carry):
                h = jnp.where(k_ref[t] > 0, carry[0], 0)
                hr, hz, hn = (product(h, u_ref[:, pl.ds(j * Hp, Hp)]) + b_ref[:, pl.ds(j * Hp, Hp)]
                              for j in range(3))
                r, z = sigmoid(part(x_ref, t, 0, Hp) + hr), sigmoid(part(x_ref, t, 1, Hp) + hz)
                n = jnp.tanh(part(x_ref, t, 2, Hp) + r * hn)
                h = (1 - z) * n + z * h
                h_ref[t] = h
                for j, a in enumerate((r, z, n, hn)):
                    a_ref[t, :, pl.ds(j * Hp, Hp)] = a
                return (h,)

            loop(S, Hp, dt, step, 1)

        def rnn(x_ref, k_ref, u_ref, b_ref, h_ref):
            def step(t, carry):
                h = jnp.where(k_ref[t] > 0, carry[0], 0)
                h = jnp.tanh(x_ref[t] + product(h, u_ref[...]) + b_ref[...])
                h_ref[t] = h
                return (h,)

            loop(S, Hp, dt, step, 1)

        kernel, outs = {"lstm": (lstm, [Hp, Hp, Hp, 4 * Hp]), "gru": (gru, [Hp, 4 * Hp]), "rnn": (rnn, [Hp])}[cell]
        params = [g.pad(xw, G), g.mask(keep, dt), g.weights(w_hh).T, g.bias(b_hh)]  # h @ u is W_hh h
        saved = call(kernel, S, g.Rp, [G * Hp, 1, (Hp, G * Hp), (1, G * Hp)], outs, params)
        return tuple(g.cut(a, F // Hp) for a, F in zip(saved, outs, strict=True))

    def backward(cot, saved, prev, keep, w_hh):
        g, dt = Grid(*saved[0].shape), saved[0].dtype
        S, Hp = g.S, g.Hp

        def lstm(gh_ref, gc_ref, tc_ref, a_ref, cp_ref, k_ref, w_ref, dz_ref):
            def step(t, carry):
                i, f, gg, o = (part(a_ref, t, j, Hp) for j in range(4))
                tc = tc_ref[t]
                dh = gh_ref[t] + carry[0]
                dc = gc_ref[t] + carry[1] + dh * o * (1 - tc * tc)
                dz = (dc * gg * i * (1 - i), dc * cp_ref[t] * f * (1 - f), dc * i * (1 - gg * gg),
                      dh * tc * o * (1 - o))
                back = product(dz[0], w_ref[pl.ds(0, Hp), :])
                for j in range(4):
                    dz_ref[t, :, pl.ds(j * Hp, Hp)] = dz[j]
                    if j:
                        back = back + product(dz[j], w_ref[pl.ds(j * Hp, Hp), :])
                on = k_ref[t] > 0  # a reset passes nothing back
                return jnp.where(on, back, 0), jnp.where(on, dc * f, 0)

            loop(S, Hp, dt, step, 2, reverse=True)

        def gru(gh_ref, a_ref, hp_ref, k_ref, w_ref, dx_ref, dw_ref):
            def step(t, carry):
                r, z, n, hn = (part(a_ref, t, j, Hp) for j in range(4))
                dh = gh_ref[t] + carry[0]
                dn = dh * (1 - z) * (1 - n * n)
                dr = dn * hn * r * (1 - r)
                dz = dh * (hp_ref[t] - n) * z * (1 - z)
                back = dh * z
                for j, (dx, dw) in enumerate(((dr, dr), (dz, dz), (dn, dn * r))):
                    dx_ref[t, :, pl.ds(j * Hp, Hp)] = dx
                    dw_ref[t, :, pl.ds(j * Hp, Hp)] = dw
                    back = back + product(dw, w_ref[pl.ds(j * Hp, Hp), :])
                return (jnp.where(k_ref[t] > 0, back, 0),)

            loop(S, Hp, dt, step, 1, reverse=True)

        def rnn(gh_ref, h_ref, k_ref, w_ref, dz_ref):
            def step(t, carry):
                h = h_ref[t]
                dz = (gh_ref[t] + carry[0]) * (1 - h * h)
                dz_ref[t] = dz
                return (jnp.where(k_ref[t] > 0, product(dz, w_ref[...]), 0),)

            loop(S, Hp, dt, step, 1, reverse=True)

        w, k = g.weights(w_hh), g.mask(keep, dt)
        if cell == "lstm":
            (_, _, tc, gates), (dh, dc) = saved, cot
            params = [g.pad(dh), g.pad(dc), g.pad(tc), g.pad(gates, 4), g.pad(prev), k, w]
            (dz,) = call(lstm, S, g.Rp, [Hp, Hp, Hp, 4 * Hp, Hp, 1, (4 * Hp, Hp)], [4 * Hp], params)
            return (g.cut(dz, 4),) * 2
        if cell == "gru":
            (_, gates), (dh,) = saved, cot
            params = [g.pad(dh), g.pad(gates, 4), g.pad(prev), k, w]
            dx, dw = call(gru, S, g.Rp, [Hp, 4 * Hp, Hp, 1, (3 * Hp, Hp)], [3 * Hp, 3 * Hp], params)
            return g.cut(dx, 3), g.cut(dw, 3)
        (dz,) = call(rnn, S, g.Rp, [Hp, Hp, 1, (Hp, Hp)], [Hp], [g.pad(cot[0]), g.pad(saved[0]), k, w])
        return (g.cut(dz),) * 2

    return forward, backward
