"""Plain numpy GRU kernels: the readable reference every backend must match.

Every backend module (this one, ``_numba_kernels``, ``_cython_kernels``)
exposes the same two functions with the same arguments. They handle one
layer in one direction; the :class:`numgru.GRU` engine stacks layers and
directions around them. Arrays are C-contiguous and all floating arrays share
one dtype (float32 or float64). Kernels write into the preallocated outputs
they are given and keep no state.

Shapes (B samples, T steps, I inputs, H hidden units)::

    x        (B, T, I)   layer input, batch first
    w_ih     (3H, I)     input weights, gate blocks r, z, n
    w_hh     (3H, H)     recurrent weights, gate blocks r, z, n
    b_ih     (3H,)       input bias (zeros when the model has no bias)
    b_hh     (3H,)       recurrent bias (zeros when the model has no bias)
    h0       (B, H)      initial state
    lengths  (B,) int64  valid steps per sample, 1 <= lengths[b] <= T
    out      (B, T, H)   hidden state after each valid step, 0 past lengths[b]
    h_last   (B, H)      state after the last valid step
    gates    (B, T, 4H)  per valid step [r, z, n, hn], 0 past lengths[b];
                         or shape (0, 0, 0) when nothing is kept for backward
                         hn = W_hn h_prev + b_hn            (reset_after)
                         hn = W_hn (r * h_prev) + b_hn      (reset before)

A sample's steps run 0 .. lengths[b]-1, or lengths[b]-1 .. 0 when
``reverse`` is true (PyTorch packed-sequence semantics). ``h_prev`` is h0 for
the first processed step, else the output at the previously processed step.

The compiled backends also offer a fast path for :meth:`numgru.GRU.step`,
one step of a stack of L unidirectional layers (this module does not; the
engine then runs ``cell_forward`` layer by layer):

``step_prepare(params, weight_names, bias_names=None)``
    Says where the weights are: the dict ``params`` and the keys of
    ``w_ih`` and ``w_hh`` of each layer in turn (2L names), and of ``b_ih``
    and ``b_hh`` (2L names, or None for zero biases). ``step_forward`` looks
    the arrays up at every call, so replaced arrays and changes made in place
    are seen.
``step_forward(x, h, prepared, reset_after, n_threads=None)``
    ``x`` (B, I), ``h`` (L, B, H) or None for zeros; returns the new state
    (L, B, H), or None with nothing computed unless every array is a
    C-contiguous ``numpy.ndarray`` of the native float32 or float64 dtype
    (one for all) with these shapes and ``x`` and ``h`` hold no NaN or
    infinity, so that the caller can validate, convert and call again.
    ``n_threads`` None means :func:`numgru.get_num_threads`. Every gate
    pre-activation is a dot product over one row of the weights, summed in
    an order fixed by the code: a sample's result does not depend on the
    batch or the thread count, and agrees with one step of
    ``layer_forward`` to rounding.
"""

import numpy as np

__all__ = ["layer_forward", "layer_backward", "cell_forward"]


def _sigmoid(a):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-a))


def _step_times(lengths, step, reverse):
    """Samples active at processing step ``step`` and their time indices."""
    active = np.flatnonzero(step < lengths)
    if reverse:
        return active, lengths[active] - 1 - step
    return active, np.full(active.shape, step, dtype=np.int64)


def _previous_state(h0, out, active, step, lengths, reverse):
    """State before processing step ``step`` for the active samples."""
    if step == 0:
        return h0[active]
    _, t_prev = _step_times(lengths[active], step - 1, reverse)
    return out[active, t_prev]


def layer_forward(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse,
                  reset_after, out, h_last, gates, n_threads=1):
    """Run one GRU layer in one direction over a batch (see module docstring).

    Writes ``out``, ``h_last`` and, when it is not empty, ``gates``.
    ``n_threads`` is accepted for a uniform backend signature and ignored.
    """
    B, T, _ = x.shape
    H = w_hh.shape[1]
    keep_gates = gates.size > 0
    gi_all = x @ w_ih.T + b_ih                       # (B, T, 3H)
    h = h0.copy()
    out[...] = 0
    if keep_gates:
        gates[...] = 0
    for step in range(T):
        active, t = _step_times(lengths, step, reverse)
        if active.size == 0:
            break
        gi = gi_all[active, t]                       # (n, 3H)
        h_prev = h[active]                           # (n, H)
        gh_rz = h_prev @ w_hh[:2 * H].T + b_hh[:2 * H]
        r = _sigmoid(gi[:, :H] + gh_rz[:, :H])
        z = _sigmoid(gi[:, H:2 * H] + gh_rz[:, H:])
        if reset_after:
            hn = h_prev @ w_hh[2 * H:].T + b_hh[2 * H:]
            n = np.tanh(gi[:, 2 * H:] + r * hn)
        else:
            hn = (r * h_prev) @ w_hh[2 * H:].T + b_hh[2 * H:]
            n = np.tanh(gi[:, 2 * H:] + hn)
        h_new = (1 - z) * n + z * h_prev
        h[active] = h_new
        out[active, t] = h_new
        if keep_gates:
            gates[active, t] = np.concatenate([r, z, n, hn], axis=1)
    h_last[...] = h


def layer_backward(x, w_ih, w_hh, h0, lengths, reverse, reset_after, out,
                   gates, d_out, d_h_last, d_x, d_h0, d_w_ih, d_w_hh, d_b_ih,
                   d_b_hh, n_threads=1):
    """Gradients of one GRU layer in one direction (see module docstring).

    Shapes of the extra arguments::

        d_out     (B, T, H)   gradient of the loss w.r.t. ``out`` (ignored past lengths)
        d_h_last  (B, H)      gradient w.r.t. ``h_last``
        d_x       (B, T, I)   written: gradient w.r.t. ``x`` (0 past lengths)
        d_h0      (B, H)      written: gradient w.r.t. ``h0``
        d_w_ih    (3H, I)     written (overwritten, not accumulated)
        d_w_hh    (3H, H)     written
        d_b_ih    (3H,)       written
        d_b_hh    (3H,)       written

    ``out`` and ``gates`` are what :func:`layer_forward` wrote for the same
    inputs.
    """
    B, T, _ = x.shape
    H = w_hh.shape[1]
    d_gi_all = np.zeros((B, T, 3 * H), dtype=x.dtype)   # gradient of gi
    d_gh_all = np.zeros((B, T, 3 * H), dtype=x.dtype)   # gradient of gh
    h_prev_all = np.zeros((B, T, H), dtype=x.dtype)     # h_prev per step
    hn_input_all = np.zeros((B, T, H), dtype=x.dtype)   # what W_hn multiplies
    dh = d_h_last.copy()
    for step in range(T - 1, -1, -1):
        active, t = _step_times(lengths, step, reverse)
        if active.size == 0:
            continue
        dh_next = dh[active] + d_out[active, t]
        g = gates[active, t]
        r, z, n, hn = g[:, :H], g[:, H:2 * H], g[:, 2 * H:3 * H], g[:, 3 * H:]
        h_prev = _previous_state(h0, out, active, step, lengths, reverse)
        dn = dh_next * (1 - z)
        dz = dh_next * (h_prev - n)
        da_n = dn * (1 - n * n)
        da_z = dz * z * (1 - z)
        if reset_after:
            da_r = da_n * hn * r * (1 - r)
            d_gh_n = da_n * r
            dh_prev = dh_next * z + d_gh_n @ w_hh[2 * H:]
            hn_input = h_prev
        else:
            d_rh = da_n @ w_hh[2 * H:]                 # gradient of r * h_prev
            da_r = d_rh * h_prev * r * (1 - r)
            d_gh_n = da_n
            dh_prev = dh_next * z + d_rh * r
            hn_input = r * h_prev
        d_gh_rz = np.concatenate([da_r, da_z], axis=1)
        dh_prev += d_gh_rz @ w_hh[:2 * H]
        dh[active] = dh_prev
        d_gi_all[active, t] = np.concatenate([da_r, da_z, da_n], axis=1)
        d_gh_all[active, t] = np.concatenate([d_gh_rz, d_gh_n], axis=1)
        h_prev_all[active, t] = h_prev
        hn_input_all[active, t] = hn_input
    d_h0[...] = dh
    d_x[...] = d_gi_all @ w_ih
    flat_d_gi = d_gi_all.reshape(B * T, 3 * H)
    flat_d_gh = d_gh_all.reshape(B * T, 3 * H)
    d_w_ih[...] = flat_d_gi.T @ x.reshape(B * T, -1)
    d_w_hh[:2 * H] = flat_d_gh[:, :2 * H].T @ h_prev_all.reshape(B * T, H)
    d_w_hh[2 * H:] = flat_d_gh[:, 2 * H:].T @ hn_input_all.reshape(B * T, H)
    d_b_ih[...] = flat_d_gi.sum(axis=0)
    d_b_hh[...] = flat_d_gh.sum(axis=0)


def cell_forward(x, w_ih, w_hh, b_ih, b_hh, h, reset_after, h_new,
                 n_threads=1):
    """One step of one GRU layer for a batch (a GRU cell).

    Shapes: ``x`` (B, I), ``h`` (B, H) the previous state, ``h_new`` (B, H)
    written with the new state; weights and biases as in the module
    docstring. ``n_threads`` is accepted for a uniform backend signature and
    ignored.
    """
    H = w_hh.shape[1]
    gi = x @ w_ih.T + b_ih
    gh_rz = h @ w_hh[:2 * H].T + b_hh[:2 * H]
    r = _sigmoid(gi[:, :H] + gh_rz[:, :H])
    z = _sigmoid(gi[:, H:2 * H] + gh_rz[:, H:])
    if reset_after:
        hn = h @ w_hh[2 * H:].T + b_hh[2 * H:]
        n = np.tanh(gi[:, 2 * H:] + r * hn)
    else:
        hn = (r * h) @ w_hh[2 * H:].T + b_hh[2 * H:]
        n = np.tanh(gi[:, 2 * H:] + hn)
    h_new[...] = (1 - z) * n + z * h
