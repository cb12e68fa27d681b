"""Write the Keras agreement fixtures ``tests/fixtures/keras_*.npz``.

Run with Keras 3 installed, on any backend (``KERAS_BACKEND=torch python
scripts/make_keras_fixtures.py``). Each file holds one stack of Keras ``GRU``
layers (or ``Bidirectional(GRU)`` layers, ``merge_mode="concat"``):

``meta``
    JSON string: units, num_layers, reset_after, use_bias, bidirectional,
    return_sequences, dtype, Keras version and backend.
``weights:<layer>:<index>``
    ``layer.get_weights()`` of each layer, in order.
``x``
    The input, batch first.
``output``
    The last layer's output: every step (batch, steps, D*units) when
    ``return_sequences``, else the final state (batch, D*units).
``states``
    Final state of each direction of the last layer, (D, batch, units),
    forward first.

``meta["float64_matmul"]`` records whether ``keras.ops.matmul`` of two
float64 arrays returns float64. In Keras 3.15 it does not: its type
promotion turns 64-bit results into 32-bit ones, so a float64 layer that runs
the generic cell loop (``reset_after=False``) rounds its matrix products to
float32, while the torch backend's ``reset_after=True`` path stays in float64.
The tests set their tolerance from it. The tests read these files with numpy
only.
"""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, os.pardir, "tests", "fixtures")

# name: (n_features, units, num_layers, reset_after, use_bias, bidirectional,
#        return_sequences, batch, steps, dtype)
CONFIGS = {
    # the common Keras example: GRU(64) on windows of 100 univariate steps
    "textbook_float32": (1, 64, 1, True, True, False, False, 32, 100, "float32"),
    "reset_after_float64": (3, 8, 1, True, True, False, True, 4, 10, "float64"),
    "reset_before_float64": (3, 8, 1, False, True, False, True, 4, 10, "float64"),
    "reset_before_float32": (3, 8, 1, False, True, False, True, 4, 10, "float32"),
    "stack2_reset_after_float64": (5, 6, 2, True, True, False, True, 3, 7, "float64"),
    "stack2_reset_before_float64": (5, 6, 2, False, True, False, True, 3, 7, "float64"),
    "bidir2_reset_after_float64": (4, 5, 2, True, True, True, True, 3, 6, "float64"),
    "bidir2_reset_before_float64": (4, 5, 2, False, True, True, True, 3, 6, "float64"),
    "nobias_reset_before_float64": (3, 4, 1, False, False, False, True, 2, 5, "float64"),
}


def make_fixture(name, config, seed):
    (n_features, units, num_layers, reset_after, use_bias, bidirectional,
     return_sequences, batch, steps, dtype) = config
    keras.config.set_floatx(dtype)  # else parts of the computation run in float32
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    inputs = keras.Input((steps, n_features), dtype=dtype)
    y = inputs
    layers = []
    states = None
    for k in range(num_layers):
        last = k == num_layers - 1
        gru = keras.layers.GRU(
            units, reset_after=reset_after, use_bias=use_bias,
            return_sequences=return_sequences or not last,
            return_state=last, dtype=dtype)
        layer = (keras.layers.Bidirectional(gru, merge_mode="concat", dtype=dtype)
                 if bidirectional else gru)
        layers.append(layer)
        result = layer(y)
        if last:
            y, states = result[0], result[1:]
        else:
            y = result
    model = keras.Model(inputs, [y, *states])
    # Non-zero biases, so that every bias is tested.
    for layer in layers:
        layer.set_weights([w + rng.uniform(-0.3, 0.3, w.shape).astype(w.dtype)
                           if w.ndim == 1 or w.shape[0] == 2 else w
                           for w in layer.get_weights()])
    x = rng.standard_normal((batch, steps, n_features)).astype(dtype)
    probe = keras.ops.matmul(np.ones((1, 1)), np.ones((1, 1)))
    float64_matmul = str(keras.ops.convert_to_numpy(probe).dtype) == "float64"
    output, *final_states = model.predict(x, verbose=0)
    arrays = {
        "meta": np.array(json.dumps({
            "n_features": n_features, "units": units, "num_layers": num_layers,
            "reset_after": reset_after, "use_bias": use_bias,
            "bidirectional": bidirectional,
            "return_sequences": return_sequences, "dtype": dtype,
            "keras_version": keras.__version__,
            "keras_backend": keras.backend.backend(),
            "float64_matmul": float64_matmul,
        })),
        "x": x,
        "output": np.asarray(output),
        "states": np.stack([np.asarray(s) for s in final_states]),
    }
    for k, layer in enumerate(layers):
        for i, w in enumerate(layer.get_weights()):
            arrays[f"weights:{k}:{i}"] = np.asarray(w)
    for key, value in arrays.items():
        if value.dtype.kind == "f":
            assert value.dtype == np.dtype(dtype), (name, key, value.dtype)
    path = os.path.join(OUT_DIR, f"keras_{name}.npz")
    np.savez_compressed(path, **arrays)
    return path


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    total = 0
    for seed, (name, config) in enumerate(CONFIGS.items()):
        path = make_fixture(name, config, seed=2000 + seed)
        size = os.path.getsize(path)
        total += size
        print(f"{os.path.relpath(path)}: {size / 1024:.1f} KiB")
    print(f"total: {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
