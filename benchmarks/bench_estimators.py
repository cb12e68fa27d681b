"""asv benchmarks of the scikit-learn estimators: ``fit`` and ``predict``.

Each shape (B, T, I, H) becomes a data set of ``N_BATCHES * B`` sequences of
T steps and I features, fitted with ``batch_size=B`` and ``hidden_size=H``
for ``MAX_ITER`` epochs. Every benchmark is skipped when
``numgru.estimators`` does not import.
"""

import warnings

import numpy as np

import numgru

from . import ANCHOR_SHAPES, BACKENDS, DTYPE, N_THREADS, skip_unless_runnable

ESTIMATOR_SHAPES = ["small", "textbook_keras", "medium"]
ESTIMATOR_NAMES = ["GRURegressor", "GRUClassifier"]
N_BATCHES = 4
MAX_ITER = 2
N_CLASSES = 3


def load_estimator_class(name):
    """Return ``numgru.estimators.<name>``.

    Raises
    ------
    NotImplementedError
        If ``numgru.estimators`` or the class does not exist yet.
    """
    try:
        from numgru import estimators
    except ImportError as exc:
        raise NotImplementedError(f"numgru.estimators does not import: {exc}") from exc
    try:
        return getattr(estimators, name)
    except AttributeError as exc:
        raise NotImplementedError(f"numgru.estimators has no {name}") from exc


def make_dataset(estimator_name, shape, seed=0):
    """Random sequences and targets for one estimator at one shape.

    Returns
    -------
    X : ndarray of shape (N_BATCHES * B, T, I), float32
    y : ndarray of shape (N_BATCHES * B,)
        Real targets for the regressor, labels 0 .. N_CLASSES-1 for the
        classifier.
    """
    n_samples, n_steps, n_inputs, _ = shape
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N_BATCHES * n_samples, n_steps, n_inputs)).astype(DTYPE)
    signal = X.mean(axis=(1, 2))
    if estimator_name == "GRUClassifier":
        y = np.digitize(signal, np.quantile(signal, [1 / 3, 2 / 3]))
    else:
        y = signal.astype(DTYPE)
    return X, y


class EstimatorBenchmark:
    """``fit`` and ``predict`` of GRURegressor and GRUClassifier."""

    params = (ESTIMATOR_NAMES, BACKENDS, ESTIMATOR_SHAPES)
    param_names = ["estimator", "backend", "shape"]
    timeout = 300

    def setup(self, estimator, backend, shape):
        estimator_class = load_estimator_class(estimator)
        skip_unless_runnable(backend, shape)
        numgru.set_num_threads(N_THREADS)
        self.estimator_class = estimator_class
        self.anchor_shape = ANCHOR_SHAPES[shape]
        self.X, self.y = make_dataset(estimator, self.anchor_shape)
        self.fitted = self.make_fitted_estimator(backend)
        # one sequence runs serial kernels that fit (on whole batches) never
        # loaded: load them here, not in the timed call
        self.fitted.predict(self.X[:1])

    def make_estimator(self, backend):
        """A new, unfitted estimator for the benchmark's shape and backend."""
        batch_size, _, _, hidden_size = self.anchor_shape
        return self.estimator_class(
            hidden_size=hidden_size, max_iter=MAX_ITER, batch_size=batch_size,
            backend=backend, dtype="float32", n_jobs=N_THREADS, random_state=0)

    def make_fitted_estimator(self, backend):
        """Fit a new estimator, silencing convergence warnings."""
        estimator = self.make_estimator(backend)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimator.fit(self.X, self.y)
        return estimator

    def time_fit(self, estimator, backend, shape):
        self.make_fitted_estimator(backend)

    def peakmem_fit(self, estimator, backend, shape):
        self.make_fitted_estimator(backend)

    def time_predict(self, estimator, backend, shape):
        self.fitted.predict(self.X)

    def peakmem_predict(self, estimator, backend, shape):
        self.fitted.predict(self.X)

    def time_predict_one(self, estimator, backend, shape):
        self.fitted.predict(self.X[:1])
