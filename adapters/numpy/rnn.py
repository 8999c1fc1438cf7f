"""The NumPy float64 reference RNN: the oracle every framework's RNN strategies are compared with.

Each sequence runs on its own in float64 (only its valid steps are ever read, so padding, even NaN, cannot leak)
and its gradient is hand-written backpropagation through time, independent of every framework's autodiff.
"""
from __future__ import annotations

import numpy as np

from adapters.spec import RnnOut, RnnSpec, Strategy, strategy_table


def _rows(x: np.ndarray, lengths: np.ndarray, side: str) -> list[np.ndarray]:
    """Each sequence's valid steps, unpadded."""
    T = x.shape[1]
    return [x[b, :n] if side == "right" else x[b, T - n:] for b, n in enumerate(lengths)]


def _put(dst: np.ndarray, b: int, rows: np.ndarray, side: str) -> None:
    """Write one sequence's valid steps back into row b of a padded array (inverse of `_rows`)."""
    n = len(rows)
    if n:
        start = 0 if side == "right" else dst.shape[1] - n
        dst[b, start:start + n] = rows


def _run(spec: RnnSpec, params, x, lengths: np.ndarray, side: str,
         cotangents: dict | None) -> tuple[RnnOut, dict | None]:
    """Forward (and, given cotangents, backward) one sequence at a time; results written back aligned like x."""
    x = np.asarray(x)
    dtype = x.dtype
    p = [[{k: np.asarray(v, dtype=np.float64) for k, v in d.items()} for d in layer] for layer in params]
    B, T, _ = x.shape
    D, H, NL = spec.num_directions, spec.hidden_size, spec.num_layers
    outputs = np.zeros((B, T, D * H))
    h_n, c_n = np.zeros((NL * D, B, H)), np.zeros((NL * D, B, H))
    grads = None
    if cotangents is not None:
        cot = {k: np.asarray(v, dtype=np.float64) for k, v in cotangents.items()}
        cot_rows = _rows(cot["outputs"], lengths, side)
        grads = {"x": np.zeros(x.shape), "params": [[{k: np.zeros_like(v) for k, v in d.items()} for d in layer]
                                                     for layer in p]}
    for b, row in enumerate(_rows(x, lengths, side)):
        ys, h_n[:, b], c_n[:, b], tapes = _seq_forward(spec, p, row.astype(np.float64))
        _put(outputs, b, ys, side)
        if grads is not None:
            dc = cot["c_n"][:, b] if spec.cell == "lstm" else np.zeros((NL * D, H))
            dxs = _seq_backward(spec, p, tapes, cot_rows[b], cot["h_n"][:, b], dc, grads["params"])
            _put(grads["x"], b, dxs, side)
    out = RnnOut(outputs.astype(dtype), h_n.astype(dtype), c_n.astype(dtype) if spec.cell == "lstm" else None,
                 "numpy-loop")
    if grads is not None:
        grads = {"x": grads["x"].astype(dtype),
                 "params": [[{k: v.astype(dtype) for k, v in d.items()} for d in layer] for layer in grads["params"]]}
    return out, grads


def _forward(adapter, spec, params, x, lengths, side, device):
    return _run(spec, params, x, lengths, side, None)[0]


def _vjp(adapter, spec, params, x, lengths, cotangents, side, device):
    return _run(spec, params, x, lengths, side, cotangents)


STRATEGIES = strategy_table(
    Strategy("reference", _forward, _vjp, doc="per-sequence loop, hand-written BPTT, float64"),
)


# -- RNN cells: one forward step and one backward step each ------------------------------------------------------
# A forward step maps (p, x, h, c) -> (h', c', cache); cells without a cell state carry c through unchanged (zero).
# A backward step maps (p, cache, dh', dc') -> (d_gi, d_gh, dh_direct, dc), where d_gi / d_gh are the gradients of
# the pre-activations W_ih x + b_ih and W_hh h + b_hh, and dh_direct is the part of dh that bypasses W_hh (GRU's
# z*h). The shared driver turns d_gi / d_gh into weight, input and hidden-state gradients.

def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # overflow-free form of 1 / (1 + exp(-a))


def _rnn_step(p, x, h, c):
    h_new = np.tanh(p["w_ih"] @ x + p["b_ih"] + p["w_hh"] @ h + p["b_hh"])
    return h_new, c, h_new


def _rnn_step_back(p, h_new, dh, dc):
    da = dh * (1.0 - h_new**2)
    return da, da, 0.0, dc


def _lstm_step(p, x, h, c):
    i, f, g, o = np.split(p["w_ih"] @ x + p["b_ih"] + p["w_hh"] @ h + p["b_hh"], 4)
    i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
    c_new = f * c + i * g
    tc = np.tanh(c_new)
    return o * tc, c_new, (i, f, g, o, c, tc)


def _lstm_step_back(p, cache, dh, dc):
    i, f, g, o, c, tc = cache
    dc = dc + dh * o * (1.0 - tc**2)
    da = np.concatenate([dc * g * i * (1.0 - i), dc * c * f * (1.0 - f), dc * i * (1.0 - g**2),
                         dh * tc * o * (1.0 - o)])
    return da, da, 0.0, dc * f


def _gru_step(p, x, h, c):
    gi_r, gi_z, gi_n = np.split(p["w_ih"] @ x + p["b_ih"], 3)
    gh_r, gh_z, gh_n = np.split(p["w_hh"] @ h + p["b_hh"], 3)
    r, z = _sigmoid(gi_r + gh_r), _sigmoid(gi_z + gh_z)
    n = np.tanh(gi_n + r * gh_n)
    return (1.0 - z) * n + z * h, c, (r, z, n, gh_n, h)


def _gru_step_back(p, cache, dh, dc):
    r, z, n, gh_n, h = cache
    dan = dh * (1.0 - z) * (1.0 - n**2)
    dar = dan * gh_n * r * (1.0 - r)
    daz = dh * (h - n) * z * (1.0 - z)
    return np.concatenate([dar, daz, dan]), np.concatenate([dar, daz, dan * r]), dh * z, dc


_CELLS = {"rnn": (_rnn_step, _rnn_step_back), "lstm": (_lstm_step, _lstm_step_back),
          "gru": (_gru_step, _gru_step_back)}


# -- shared drivers: one direction of one layer, then a whole stacked (bi)directional network, per sequence ---------

def _dir_forward(cell: str, p: dict, xs: np.ndarray):
    """Run one cell over xs [L, in] from zero states: (ys [L, H], h_last, c_last, tape for the backward pass)."""
    step = _CELLS[cell][0]
    H = p["w_hh"].shape[1]
    h, c = np.zeros(H), np.zeros(H)
    ys, tape = np.zeros((len(xs), H)), []
    for t, x in enumerate(xs):
        h_prev = h
        h, c, cache = step(p, x, h, c)
        ys[t] = h
        tape.append((x, h_prev, cache))
    return ys, h, c, tape


def _dir_backward(cell: str, p: dict, tape: list, dys: np.ndarray, dh: np.ndarray, dc: np.ndarray,
                  g: dict) -> np.ndarray:
    """Backpropagation through time for `_dir_forward`: accumulates weight grads into g, returns dxs [L, in]."""
    step_back = _CELLS[cell][1]
    dxs = np.zeros((len(tape), p["w_ih"].shape[1]))
    for t in reversed(range(len(tape))):
        x, h_prev, cache = tape[t]
        d_gi, d_gh, dh_direct, dc = step_back(p, cache, dh + dys[t], dc)
        g["w_ih"] += np.outer(d_gi, x)
        g["b_ih"] += d_gi
        g["w_hh"] += np.outer(d_gh, h_prev)
        g["b_hh"] += d_gh
        dxs[t] = p["w_ih"].T @ d_gi
        dh = dh_direct + p["w_hh"].T @ d_gh
    return dxs


def _order(direction: int) -> slice:
    """Time order of a direction: forward reads steps 0..L-1, backward L-1..0."""
    return slice(None, None, 1 if direction == 0 else -1)


def _seq_forward(spec: RnnSpec, p: list, xs: np.ndarray):
    """One unpadded sequence xs [L, I] through the stack: (ys [L, D*H], h_n [NL*D, H], c_n [NL*D, H], tapes)."""
    D, H = spec.num_directions, spec.hidden_size
    hs, cs = np.zeros((spec.num_layers * D, H)), np.zeros((spec.num_layers * D, H))
    tapes = []
    for layer in range(spec.num_layers):
        ys = np.zeros((len(xs), D * H))
        tapes.append([])
        for d in range(D):
            o = _order(d)
            y, hs[layer * D + d], cs[layer * D + d], tape = _dir_forward(spec.cell, p[layer][d], xs[o])
            ys[:, d * H:(d + 1) * H] = y[o]
            tapes[layer].append(tape)
        xs = ys
    return xs, hs, cs, tapes


def _seq_backward(spec: RnnSpec, p: list, tapes: list, dys: np.ndarray, dhs: np.ndarray, dcs: np.ndarray,
                  grads: list) -> np.ndarray:
    """Gradient of one sequence's outputs/final states back to its input xs [L, I]; param grads accumulate."""
    D, H = spec.num_directions, spec.hidden_size
    for layer in reversed(range(spec.num_layers)):
        dxs = 0.0
        for d in range(D):
            o, k = _order(d), layer * D + d
            dx = _dir_backward(spec.cell, p[layer][d], tapes[layer][d], dys[o, d * H:(d + 1) * H], dhs[k], dcs[k],
                               grads[layer][d])
            dxs = dxs + dx[o]
        dys = dxs
    return dys
