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
triton 3.9) the kernel spilled 27 KB a thread at 4 warps, where 3xTF32 at 8 warps spills 260 bytes (the gradient's
kernel 60; float64 876 and 96).

`tests/test_pallas_rnn.py` emulates 3xTF32 (`lax.reduce_precision` to TF32's 10 mantissa bits) inside the kernels
on the CPU: on an H=128, 128-step grid every quantity's error against the float64 reference is that of full float32
products (equal to 3 digits, grad_x 0.85x of it), where plain TF32's is 136-410x larger. float64 products are exact
(Triton's fp64 `tl.dot`). On the CPU the kernels run in Pallas's interpret mode (no Triton), for the tests.

Column blocks (hidden sizes above ONE_BLOCK = 128, padded to 256 and up): each product takes W_hh's gate slice as
one Hp x Hp tile, which Triton stages in shared memory: at Hp = 256 that is 256 KB in float32, more than an H100's
thread block may have (227 KB), and the same offline compile spilled ~39 KB a thread. Above 128 the hidden units
run in COL_BLOCK = 64-unit column blocks instead: the states are tuples of [ROW_BLOCK, 64] blocks, each product a
sum over the left operand's blocks of 64 x 64 tiles (16 KB), every sum in the blocks' order; the gradient's kernel
takes one left block at a time into all its tiles, so one left operand is live at a time (taken the other way
round it spilled ~40 KB at H=256). Offline at H=256, 8 warps: LSTM 1.9 KB / 1.0 KB spilled (forward / gradient),
GRU 1.9 KB / 0.3 KB, tanh RNN 0.9 KB / 40 B; H=512 12 KB / 3.9 KB. Their tiles fit any thread block, but no GPU
has run or timed them. The benchmarks run H=128 as one block: 64-unit blocks there would spill 40 B where one block
spills 260, a trade of fewer spills for more, smaller products that only a GPU can settle.

XLA's own compile for a compile-only H100 (`scripts/gpu_aot.py`: XLA's Triton and ptxas, jax 0.10.2) agrees: at
H=128 one block, 64 KB of shared memory, 520 B / 32 B spilled (forward / gradient); at H=256 64-unit blocks, 16 KB,
1.8 KB / 112 B, where one 256 x 256 tile is refused (RESOURCE_EXHAUSTED: 262144 bytes of shared memory asked,
232448 available). At H=512 ptxas alone takes minutes (the whole compile 298 s on a 2-core machine, per grid
shape) and the forward kernel spills 12.6 KB a thread: the unrolled tiles (4 gates x 8 x 8 per step) are past what
this kernel is for, so hidden sizes above MAX_HIDDEN = 256 run concat_rows' scans on the same grid instead.
"""
from __future__ import annotations

from functools import cache

#: rows per program: tl.dot's smallest M
ROW_BLOCK = 16
#: Triton's warps per program (8: 3xTF32's operands fit in registers; see the module docstring)
NUM_WARPS = 8
#: padded hidden sizes up to this run as one column block: one product per gate, W_hh's gate slice in one tile
ONE_BLOCK = 128
#: above ONE_BLOCK, the hidden units' column block: W_hh in COL_BLOCK x COL_BLOCK tiles (16 KB of shared memory in
#: float32, where H=256 as one block took 256 KB, more than an H100's thread block has; see the module docstring)
COL_BLOCK = 64
#: the largest padded hidden size the kernels take (`fits`): above it "concat_pallas" runs concat_rows' lax.scan
#: loops on its grid, and its kernel name says so. At H=512 (4 gates x 8 x 8 unrolled 64 x 64 tiles a step) XLA's
#: compile for an H100 took 298 s on a 2-core machine, per grid shape (a GPU bench case has 120 s), and the forward
#: kernel spilled 12.6 KB a thread; 128-unit blocks there spilled 128 KB (`scripts/gpu_aot.py`)
MAX_HIDDEN = 256
#: the float32 products' algorithm on the GPU (a `jax.lax.DotAlgorithmPreset` name); float64 takes the default
F32_ALGORITHM = "TF32_TF32_F32_X3"


def padded_size(n: int, lo: int = 16) -> int:
    """The power of two >= max(n, lo): a hidden size as the kernels hold it."""
    return max(lo, 1 << max(0, (n - 1).bit_length()))


def fits(hidden: int) -> bool:
    """Whether the kernels take this hidden size (padded, at most MAX_HIDDEN)."""
    return padded_size(hidden) <= MAX_HIDDEN


def column_block(Hp: int, blocks: tuple[int, int] = (ONE_BLOCK, COL_BLOCK)) -> int:
    """The hidden units' column block for a padded hidden size Hp: Hp itself up to blocks[0], else blocks[1]."""
    one, split = blocks
    if split < 16 or split & (split - 1) or split > one:
        raise ValueError(f"column blocks must be powers of two >= 16, the split one at most the other, got {blocks}")
    return Hp if Hp <= one else split


def kernel_name(dtype: str, interpret: bool, hidden: int) -> str:
    """What the kernels run as, for the records' kernel field ("tiles[W]" where the hidden units run in blocks)."""
    name = "pallas-interpret" if interpret else "pallas-triton 3xtf32" if dtype == "float32" else "pallas-triton"
    Hp = padded_size(hidden)
    W = column_block(Hp)
    return name if W == Hp else f"{name} tiles[{W}]"


#: per cell: the gates of its input projection xw and of W_hh
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


@cache
def rnn_loops(jax, cell: str, interpret: bool, dot=None, blocks: tuple[int, int] = (ONE_BLOCK, COL_BLOCK)):
    """(forward, backward) of `reset_scan`'s two loops for `cell` (PyTorch gate order and GRU formula):
    forward(xw [S,R,G*H], w_hh [G*H,H], b_hh [G*H], keep [S,R] bool) -> what `reset_scan`'s forward scan saves: LSTM
    (h, c, tanh c, gates), GRU (h, gates), tanh RNN (h,), each [S,R,H] or gates [S,R,4H];
    backward(cotangents (of h, and of c for the LSTM), saved (as forward returned it), prev (c_prev for the LSTM,
    h_prev for the GRU, None), keep, w_hh) -> (d xw, d (W_hh h + b_hh)) [S,R,G*H] (the same array but for the GRU's
    n gate), from which `reset_scan` sums the parameters' gradients after the loop.
    `interpret`: Pallas's interpret mode (CPU); otherwise Triton. `dot(a, b)`: the product inside the kernels (tests
    pass an emulation); default: float32 in F32_ALGORITHM on Triton, HIGHEST in interpret mode; float64 exact.
    `blocks`: (one, split): a padded hidden size above `one` runs in column blocks of `split` units (W_hh's
    products in split x split tiles, the states as tuples of blocks; `column_block`), tests pass small ones."""
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
            self.W = column_block(self.Hp, blocks)  # the hidden units' column block
            self.nb = self.Hp // self.W

        def starts(self, n: int) -> list[int]:
            """Where column block n of each of 4 gate-sized parts starts in a [..., 4*Hp] array (the saved gates,
            or the first G of them in xw, W_hh^T and b_hh)."""
            return [j * self.Hp + n * self.W for j in range(4)]

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

    def cols(ref, t, start: int, width: int):
        """Columns start..start+width of slot t of a [S, rows, F] block."""
        return ref[t, :, pl.ds(start, width)]

    def mul(blocks, ref, starts, W: int, accs=None):
        """[acc + sum_i blocks[i] @ ref[i*W:(i+1)*W, c:c+W] for c, acc in zip(starts, accs)]: products by a weight
        held as W x W tiles, the blocks ([ROW_BLOCK, W] each) being the left operand's column blocks in order. Each
        block meets all its tiles before the next block is read (one left operand live at a time); every sum runs
        in the blocks' order."""
        out = list(accs) if accs is not None else [None] * len(starts)
        for i, b in enumerate(blocks):
            for o, c in enumerate(starts):
                p = product(b, ref[pl.ds(i * W, W), pl.ds(c, W)])
                out[o] = p if out[o] is None else out[o] + p
        return out

    def loop(g, dt, step, n: int, reverse: bool = False):
        """Run step(t, carry) over t = 0..S-1 (or back) from `n` zero states, each g.nb blocks [ROW_BLOCK, g.W]."""
        zero = tuple(tuple(jnp.zeros((ROW_BLOCK, g.W), dt) for _ in range(g.nb)) for _ in range(n))
        S = g.S
        lax.fori_loop(0, S, (lambda i, c: step(S - 1 - i, c)) if reverse else step, zero)

    def forward(xw, w_hh, b_hh, keep):
        S, R, GH = xw.shape
        g, dt = Grid(S, R, GH // G), xw.dtype
        Hp, W, nb, sigmoid = g.Hp, g.W, g.nb, jax.nn.sigmoid

        def lstm(x_ref, k_ref, u_ref, b_ref, h_ref, c_ref, tc_ref, a_ref):
            def step(t, carry):
                on = k_ref[t] > 0  # [ROW_BLOCK, 1]: False at a sequence's first slot
                h, c = ([jnp.where(on, s, 0) for s in blocks] for blocks in carry)
                hs, cs = [], []
                for n in range(nb):  # the hidden units' column blocks
                    at = g.starts(n)
                    z = [cols(x_ref, t, a, W) + mul(h, u_ref, [a], W)[0] + b_ref[:, pl.ds(a, W)] for a in at]
                    i, f, gg, o = sigmoid(z[0]), sigmoid(z[1]), jnp.tanh(z[2]), sigmoid(z[3])
                    cn = f * c[n] + i * gg
                    tc = jnp.tanh(cn)
                    hn = o * tc
                    span = pl.ds(n * W, W)
                    h_ref[t, :, span], c_ref[t, :, span], tc_ref[t, :, span] = hn, cn, tc
                    for a, act in zip(at, (i, f, gg, o), strict=True):
                        a_ref[t, :, pl.ds(a, W)] = act
                    hs.append(hn)
                    cs.append(cn)
                return tuple(hs), tuple(cs)

            loop(g, dt, step, 2)

        def gru(x_ref, k_ref, u_ref, b_ref, h_ref, a_ref):
            def step(t, carry):
                h = [jnp.where(k_ref[t] > 0, s, 0) for s in carry[0]]
                hs = []
                for n in range(nb):
                    at = g.starts(n)
                    hr, hz, hn = (mul(h, u_ref, [a], W)[0] + b_ref[:, pl.ds(a, W)] for a in at[:3])
                    r, z = sigmoid(cols(x_ref, t, at[0], W) + hr), sigmoid(cols(x_ref, t, at[1], W) + hz)
                    new = jnp.tanh(cols(x_ref, t, at[2], W) + r * hn)
                    hs.append((1 - z) * new + z * h[n])
                    h_ref[t, :, pl.ds(n * W, W)] = hs[-1]
                    for a, act in zip(at, (r, z, new, hn), strict=True):
                        a_ref[t, :, pl.ds(a, W)] = act
                return (tuple(hs),)

            loop(g, dt, step, 1)

        def rnn(x_ref, k_ref, u_ref, b_ref, h_ref):
            def step(t, carry):
                h = [jnp.where(k_ref[t] > 0, s, 0) for s in carry[0]]
                hs = []
                for n in range(nb):
                    a = n * W
                    hs.append(jnp.tanh(cols(x_ref, t, a, W) + mul(h, u_ref, [a], W)[0] + b_ref[:, pl.ds(a, W)]))
                    h_ref[t, :, pl.ds(a, W)] = hs[-1]
                return (tuple(hs),)

            loop(g, dt, step, 1)

        kernel, outs = {"lstm": (lstm, [Hp, Hp, Hp, 4 * Hp]), "gru": (gru, [Hp, 4 * Hp]), "rnn": (rnn, [Hp])}[cell]
        params = [g.pad(xw, G), g.mask(keep, dt), g.weights(w_hh).T, g.bias(b_hh)]  # h @ u is W_hh h
        saved = call(kernel, S, g.Rp, [G * Hp, 1, (Hp, G * Hp), (1, G * Hp)], outs, params)
        return tuple(g.cut(a, F // Hp) for a, F in zip(saved, outs, strict=True))

    def backward(cot, saved, prev, keep, w_hh):
        g, dt = Grid(*saved[0].shape), saved[0].dtype
        S, Hp, W, nb = g.S, g.Hp, g.W, g.nb

        def back(w_ref, on, dz, acc=None):
            """The carried gradient's column blocks: acc + dz @ W_hh (dz: per column block, its gates' blocks),
            nothing passed back across a reset (`on` False)."""
            flat = [blocks[j] for j in range(len(dz[0])) for blocks in dz]  # W_hh's row order: gate, then block
            return tuple(jnp.where(on, d, 0) for d in mul(flat, w_ref, [k * W for k in range(nb)], W, acc))

        def lstm(gh_ref, gc_ref, tc_ref, a_ref, cp_ref, k_ref, w_ref, dz_ref):
            def step(t, carry):
                dzs, dcs = [], []
                for n in range(nb):
                    at, span = g.starts(n), pl.ds(n * W, W)
                    i, f, gg, o = (cols(a_ref, t, a, W) for a in at)
                    tc = tc_ref[t, :, span]
                    dh = gh_ref[t, :, span] + carry[0][n]
                    dc = gc_ref[t, :, span] + carry[1][n] + dh * o * (1 - tc * tc)
                    dz = (dc * gg * i * (1 - i), dc * cp_ref[t, :, span] * f * (1 - f), dc * i * (1 - gg * gg),
                          dh * tc * o * (1 - o))
                    for a, d in zip(at, dz, strict=True):
                        dz_ref[t, :, pl.ds(a, W)] = d
                    dzs.append(dz)
                    dcs.append(dc * f)
                on = k_ref[t] > 0  # a reset passes nothing back
                return back(w_ref, on, dzs), tuple(jnp.where(on, d, 0) for d in dcs)

            loop(g, dt, step, 2, reverse=True)

        def gru(gh_ref, a_ref, hp_ref, k_ref, w_ref, dx_ref, dw_ref):
            def step(t, carry):
                dws, direct = [], []
                for n in range(nb):
                    at, span = g.starts(n), pl.ds(n * W, W)
                    r, z, new, hn = (cols(a_ref, t, a, W) for a in at)
                    dh = gh_ref[t, :, span] + carry[0][n]
                    dn = dh * (1 - z) * (1 - new * new)
                    dr = dn * hn * r * (1 - r)
                    dz = dh * (hp_ref[t, :, span] - new) * z * (1 - z)
                    for a, (dx, dw) in zip(at, ((dr, dr), (dz, dz), (dn, dn * r))):
                        dx_ref[t, :, pl.ds(a, W)] = dx
                        dw_ref[t, :, pl.ds(a, W)] = dw
                    dws.append((dr, dz, dn * r))
                    direct.append(dh * z)
                return (back(w_ref, k_ref[t] > 0, dws, direct),)

            loop(g, dt, step, 1, reverse=True)

        def rnn(gh_ref, h_ref, k_ref, w_ref, dz_ref):
            def step(t, carry):
                dzs = []
                for n in range(nb):
                    span = pl.ds(n * W, W)
                    h = h_ref[t, :, span]
                    dzs.append(((gh_ref[t, :, span] + carry[0][n]) * (1 - h * h),))
                    dz_ref[t, :, span] = dzs[-1][0]
                return (back(w_ref, k_ref[t] > 0, dzs),)

            loop(g, dt, step, 1, reverse=True)

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
