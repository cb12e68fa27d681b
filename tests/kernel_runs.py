"""Run one layer of a kernel module on a problem dict (shared by kernel tests).

A problem ``p`` holds ``x``, ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh``, ``h0``,
``lengths``, ``d_out`` and ``d_h_last`` with the shapes of the kernel
contract (:mod:`numgru._reference`). Outputs start filled with ``fill`` so
that a kernel leaving an element unwritten shows.
"""

import numpy as np


def forward_layer(mod, p, reverse, reset_after, n_threads=1, keep_gates=True,
                  fill=np.nan):
    """``mod.layer_forward`` on ``p``: {"out", "h_last", "gates"}; "gates"
    has shape (0, 0, 0) unless ``keep_gates``."""
    B, T, _ = p["x"].shape
    H = p["w_hh"].shape[1]
    dtype = p["x"].dtype
    out = np.full((B, T, H), fill, dtype=dtype)
    h_last = np.full((B, H), fill, dtype=dtype)
    gates = np.full((B, T, 4 * H) if keep_gates else (0, 0, 0), fill,
                    dtype=dtype)
    mod.layer_forward(p["x"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                      p["h0"], p["lengths"], reverse, reset_after, out, h_last,
                      gates, n_threads=n_threads)
    return {"out": out, "h_last": h_last, "gates": gates}


def backward_layer(mod, p, fwd, reverse, reset_after, n_threads=1,
                   fill=np.nan):
    """``mod.layer_backward`` on ``p`` after ``fwd`` (from
    :func:`forward_layer` with the gates kept): the six gradients."""
    grads = {name: np.full(p[source].shape, fill, dtype=p["x"].dtype)
             for name, source in (("d_x", "x"), ("d_h0", "h0"),
                                  ("d_w_ih", "w_ih"), ("d_w_hh", "w_hh"),
                                  ("d_b_ih", "b_ih"), ("d_b_hh", "b_hh"))}
    mod.layer_backward(p["x"], p["w_ih"], p["w_hh"], p["h0"], p["lengths"],
                       reverse, reset_after, fwd["out"], fwd["gates"],
                       p["d_out"], p["d_h_last"], grads["d_x"], grads["d_h0"],
                       grads["d_w_ih"], grads["d_w_hh"], grads["d_b_ih"],
                       grads["d_b_hh"], n_threads=n_threads)
    return grads


def both_forms(mod, p):
    """Forward (gates kept) and backward of ``mod`` on ``p`` in the
    reset-after and reset-before forms, one direction: {"<reset_after>_<name>":
    array}."""
    results = {}
    for reset_after in (True, False):
        fwd = forward_layer(mod, p, False, reset_after)
        grads = backward_layer(mod, p, fwd, False, reset_after)
        for name, value in {**fwd, **grads}.items():
            results[f"{reset_after}_{name}"] = value
    return results
