"""Write the PyTorch agreement fixtures ``tests/fixtures/torch_*.npz``.

Run with PyTorch installed (``python scripts/make_torch_fixtures.py``). Each
file holds one configuration of ``torch.nn.GRU(..., batch_first=True)``:

``meta``
    JSON string: input_size, hidden_size, num_layers, bias, bidirectional,
    dtype, torch version.
``param:<name>``
    The module's state dict, PyTorch names and shapes.
``x``, ``h0``, ``lengths`` (only when variable lengths are used)
    The inputs. With ``lengths`` the batch goes through
    ``pack_padded_sequence(..., enforce_sorted=False)`` and the output comes
    back through ``pad_packed_sequence(..., total_length=T)``.
``out``, ``h_n``
    PyTorch's outputs.
``d_output``, ``d_h_n``
    Random G and K of the scalar loss ``sum(out * G) + sum(h_n * K)``.
``grad:<name>``, ``d_x``, ``d_h0``
    Gradients of that loss w.r.t. every parameter, x and h0.

Inputs and parameters are rounded to multiples of a power of two, so they are
exact in float32 as well as float64 and the files compress well; outputs and
gradients are stored at full precision of the configuration's dtype. The
tests read these files with numpy only: each file is checked in its own dtype
(PyTorch float64 results to 1e-10, float32 results to 1e-5), and the float64
files are also checked in float32 against the float64 results (to 1e-5). The
textbook configuration, ``nn.GRU(50, 128, batch_first=True)`` on a
(32, 20, 50) batch, is stored in float64 only, to keep the files small (about
2 MB in all); its float32 check is that second one.
"""

import json
import os

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, os.pardir, "tests", "fixtures")

# name: (input_size, hidden_size, num_layers, bias, bidirectional,
#        batch, steps, dtype, h0 ("zeros" or "random"), variable lengths)
CONFIGS = {
    "textbook_float64": (50, 128, 1, True, False, 32, 20, "float64", "zeros", False),
    "lengths_float64": (7, 16, 1, True, False, 6, 9, "float64", "random", True),
    "lengths_float32": (7, 16, 1, True, False, 6, 9, "float32", "random", True),
    "stack3_lengths_float64": (5, 12, 3, True, False, 5, 8, "float64", "random", True),
    "stack2_lengths_float32": (5, 12, 2, True, False, 5, 8, "float32", "random", True),
    "bidir2_float64": (6, 10, 2, True, True, 4, 7, "float64", "random", False),
    "bidir2_float32": (6, 10, 2, True, True, 4, 7, "float32", "random", False),
    "bidir3_lengths_float64": (5, 8, 3, True, True, 5, 9, "float64", "random", True),
    "bidir3_lengths_float32": (5, 8, 3, True, True, 5, 9, "float32", "random", True),
    "nobias_float64": (4, 6, 1, False, False, 3, 5, "float64", "random", False),
    "nobias_stack2_lengths_float64": (4, 6, 2, False, False, 4, 6, "float64", "random", True),
    "nobias_bidir2_lengths_float32": (4, 6, 2, False, True, 4, 6, "float32", "random", True),
    "single_step_float64": (3, 5, 2, True, True, 1, 1, "float64", "random", False),
}


def _round(a, bits):
    """Round to a multiple of 2**-bits (exact in float32 for |a| < 2**(24-bits))."""
    scale = float(2 ** bits)
    return np.round(np.asarray(a, dtype=np.float64) * scale) / scale


def make_fixture(name, config, seed):
    (input_size, hidden_size, num_layers, bias, bidirectional, batch, steps,
     dtype_name, h0_kind, variable) = config
    torch_dtype = {"float64": torch.float64, "float32": torch.float32}[dtype_name]
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    gru = nn.GRU(input_size, hidden_size, num_layers=num_layers, bias=bias,
                 batch_first=True, bidirectional=bidirectional)
    state = {k: _round(v.detach().numpy(), 10) for k, v in gru.state_dict().items()}
    gru.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    gru = gru.to(torch_dtype)
    d = 2 if bidirectional else 1

    x = _round(rng.standard_normal((batch, steps, input_size)), 6)
    if h0_kind == "zeros":
        h0 = np.zeros((num_layers * d, batch, hidden_size))
    else:
        h0 = _round(rng.uniform(-1, 1, (num_layers * d, batch, hidden_size)), 6)
    g = _round(rng.standard_normal((batch, steps, d * hidden_size)), 2)
    k = _round(rng.standard_normal((num_layers * d, batch, hidden_size)), 2)
    lengths = None
    if variable:
        lengths = rng.integers(1, steps + 1, size=batch)
        lengths[0] = steps
        lengths[-1] = 1
        rng.shuffle(lengths)

    xt = torch.tensor(x, dtype=torch_dtype, requires_grad=True)
    h0t = torch.tensor(h0, dtype=torch_dtype, requires_grad=True)
    if lengths is None:
        out_t, h_n_t = gru(xt, h0t)
    else:
        packed = pack_padded_sequence(xt, torch.from_numpy(lengths),
                                      batch_first=True, enforce_sorted=False)
        out_p, h_n_t = gru(packed, h0t)
        out_t, _ = pad_packed_sequence(out_p, batch_first=True,
                                       total_length=steps)
    loss = ((out_t * torch.tensor(g, dtype=torch_dtype)).sum()
            + (h_n_t * torch.tensor(k, dtype=torch_dtype)).sum())
    loss.backward()

    np_dtype = np.dtype(dtype_name)
    arrays = {
        "meta": np.array(json.dumps({
            "input_size": input_size, "hidden_size": hidden_size,
            "num_layers": num_layers, "bias": bias,
            "bidirectional": bidirectional, "dtype": dtype_name,
            "torch_version": torch.__version__,
        })),
        "x": x.astype(np_dtype),
        "h0": h0.astype(np_dtype),
        "d_output": g.astype(np_dtype),
        "d_h_n": k.astype(np_dtype),
        "out": out_t.detach().numpy(),
        "h_n": h_n_t.detach().numpy(),
        "d_x": xt.grad.numpy(),
        "d_h0": h0t.grad.numpy(),
    }
    if lengths is not None:
        arrays["lengths"] = lengths.astype(np.int64)
    for pname, param in gru.named_parameters():
        arrays["param:" + pname] = state[pname].astype(np_dtype)
        arrays["grad:" + pname] = param.grad.detach().numpy()
    for key, value in arrays.items():
        if value.dtype.kind == "f":
            assert value.dtype == np_dtype, (name, key, value.dtype)
    path = os.path.join(OUT_DIR, f"torch_{name}.npz")
    np.savez_compressed(path, **arrays)
    return path


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT_DIR, exist_ok=True)
    total = 0
    for seed, (name, config) in enumerate(CONFIGS.items()):
        path = make_fixture(name, config, seed=1000 + seed)
        size = os.path.getsize(path)
        total += size
        print(f"{os.path.relpath(path)}: {size / 1024:.1f} KiB")
    print(f"total: {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
