"""asv benchmarks of the GRU engine: forward, train step and streaming step.

Every class is parametrised over the backend and, except the one-sample
streaming step, over the anchor shapes. Combinations that cannot or should
not run here (a backend that does not import, the numpy reference at large
shapes) are skipped by ``setup`` raising ``NotImplementedError``. ``setup``
also runs the timed call once so that just-in-time compilation is not
timed.
"""

import numpy as np

import numgru

from . import (ANCHOR_SHAPES, BACKENDS, DTYPE, N_THREADS, STREAM_STEP_SHAPE,
               make_inputs, skip_unless_runnable)

SHAPE_NAMES = list(ANCHOR_SHAPES)


class _OneLayerBenchmark:
    """Shared setup: a float32 one-layer GRU and inputs at an anchor shape.

    Subclasses define ``run``, the call they time, and may define
    ``prepare``, which sets up what ``run`` needs beyond ``x`` and
    ``d_output``; ``setup`` runs ``run`` once so just-in-time compilation is
    not timed.
    """

    params = (BACKENDS, SHAPE_NAMES)
    param_names = ["backend", "shape"]
    timeout = 300

    def setup(self, backend, shape):
        skip_unless_runnable(backend, shape)
        numgru.set_num_threads(N_THREADS)
        n_inputs, n_hidden = ANCHOR_SHAPES[shape][2:]
        self.gru = numgru.GRU(n_inputs, n_hidden, dtype="float32",
                              backend=backend, random_state=0)
        self.x, self.d_output = make_inputs(ANCHOR_SHAPES[shape])
        self.prepare()
        self.run()

    def prepare(self):
        """Nothing beyond ``x`` and ``d_output`` by default."""


class Forward(_OneLayerBenchmark):
    """Inference over a batch of sequences: ``gru.forward(x)``."""

    def run(self):
        """Forward pass without keeping a cache."""
        return self.gru.forward(self.x)

    def time_forward(self, backend, shape):
        self.run()

    def peakmem_forward(self, backend, shape):
        self.run()


class ForwardOne(_OneLayerBenchmark):
    """Inference over one sequence of the shape: ``gru.forward(x[:1])``.

    The latency of predicting one series: the recurrent products run on one
    row of states, the path that the last samples of a batch which fill no
    register tile also take.
    """

    def run(self):
        """Forward pass of the first sequence, without keeping a cache."""
        return self.gru.forward(self.x[:1])

    def time_forward_one(self, backend, shape):
        self.run()


class TrainStep(_OneLayerBenchmark):
    """One training step of one layer: forward keeping the cache, then backward."""

    def run(self):
        """Forward with cache, then backward of ``sum(output * d_output)``."""
        _, _, cache = self.gru.forward(self.x, return_cache=True)
        return self.gru.backward(cache, self.d_output)

    def time_train_step(self, backend, shape):
        self.run()

    def peakmem_train_step(self, backend, shape):
        self.run()


class StepBatch(_OneLayerBenchmark):
    """Streaming inference for a batch of streams: ``gru.step`` on the first
    time step of every sequence of the shape (B streams of I inputs, H
    hidden units).

    Batches step four samples per pass over the weights, and share large
    batches between threads.
    """

    def prepare(self):
        """The step's input and a zero state, both C-contiguous."""
        self.x_t = np.ascontiguousarray(self.x[:, 0])
        self.h = np.zeros((1, len(self.x), self.gru.hidden_size), dtype=DTYPE)

    def run(self):
        """One step of every stream."""
        return self.gru.step(self.x_t, self.h)

    def time_step_batch(self, backend, shape):
        self.run()


class StreamStep:
    """Streaming inference: ``gru.step`` on one sample (B=1, I=32, H=128)."""

    params = (BACKENDS,)
    param_names = ["backend"]

    def setup(self, backend):
        skip_unless_runnable(backend)
        numgru.set_num_threads(N_THREADS)
        _, _, n_inputs, n_hidden = STREAM_STEP_SHAPE
        self.gru = numgru.GRU(n_inputs, n_hidden, dtype="float32",
                              backend=backend, random_state=0)
        rng = np.random.default_rng(0)
        self.x_t = rng.standard_normal((1, n_inputs)).astype(DTYPE)
        self.h = np.zeros((1, 1, n_hidden), dtype=DTYPE)
        try:
            self.gru.step(self.x_t, self.h)
        except (AttributeError, NotImplementedError) as exc:
            raise NotImplementedError(
                f"backend {backend!r} has no single-step kernel: {exc}") from exc

    def time_step(self, backend):
        self.gru.step(self.x_t, self.h)

    def peakmem_step(self, backend):
        self.gru.step(self.x_t, self.h)
