import io
import os
import pickle
import re
import subprocess
import sys
import time
import warnings
from contextlib import redirect_stdout

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils import gen_batches

import numgru
import numgru.estimators as estimators_module
import numgru._optim as optim_module
from numgru._optim import AdamOptimizer, SGDOptimizer, clip_grad_norm
from numgru.datasets import load_japanese_vowels
from numgru.estimators import GRUClassifier, GRURegressor
from numgru.preprocessing import SequenceScaler

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning")

TINY = dict(hidden_size=4, max_iter=3, batch_size=8, random_state=0, n_jobs=1)


def ragged_series(rng, n_samples=24, n_channels=2, max_len=9):
    lengths = rng.integers(1, max_len + 1, size=n_samples)
    return [rng.normal(size=(length, n_channels)) for length in lengths]


def regression_data(rng, n_samples=24, n_channels=2, n_outputs=1):
    X = ragged_series(rng, n_samples, n_channels)
    y = np.array([[x[:, 0].sum() * (k + 1) for k in range(n_outputs)]
                  for x in X])
    return X, (y[:, 0] if n_outputs == 1 else y)


def classification_data(rng, n_samples=30, labels=("a", "b", "c")):
    X = ragged_series(rng, n_samples)
    y = np.array(labels)[np.arange(n_samples) % len(labels)]
    for x, label in zip(X, y):
        x[:, 0] += 2.0 * labels.index(label)
    return X, y


def all_params(model):
    return [a.copy() for a in model._parameter_arrays()]


# --------------------------------------------------------------- gradients

def _finite_difference_check(model, values, lengths, y, sample_weight):
    loss, grads = model._loss_and_gradients(values, lengths, y, sample_weight)
    params = model._parameter_arrays()
    rng = np.random.default_rng(0)
    eps = 1e-6
    for param, grad in zip(params, grads):
        assert grad.shape == param.shape
        flat = param.reshape(-1)
        for index in rng.choice(flat.size, size=min(flat.size, 6), replace=False):
            saved = flat[index]
            flat[index] = saved + eps
            loss_plus, _ = model._loss_and_gradients(values, lengths, y,
                                                     sample_weight)
            flat[index] = saved - eps
            loss_minus, _ = model._loss_and_gradients(values, lengths, y,
                                                      sample_weight)
            flat[index] = saved
            numeric = (loss_plus - loss_minus) / (2 * eps)
            np.testing.assert_allclose(grad.reshape(-1)[index], numeric,
                                       rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("Estimator", [GRURegressor, GRUClassifier])
@pytest.mark.parametrize("bidirectional, num_layers, weighted",
                         [(False, 1, False), (True, 2, True)])
def test_gradient_matches_finite_differences(Estimator, bidirectional,
                                             num_layers, weighted):
    rng = np.random.default_rng(0)
    if Estimator is GRURegressor:
        X, y = regression_data(rng, n_samples=7, n_outputs=2)
    else:
        X, y = classification_data(rng, n_samples=7)
    model = Estimator(hidden_size=3, num_layers=num_layers,
                      bidirectional=bidirectional, alpha=0.3, dtype="float64",
                      max_iter=1, random_state=0, n_jobs=1).fit(X, y)
    batch = estimators_module.check_sequences(X, dtype="float64")
    y_encoded, _ = model._validate_targets(y, first_pass=False)
    sample_weight = rng.uniform(0.5, 2.0, size=7) if weighted else None
    _finite_difference_check(model, batch.values, batch.lengths, y_encoded,
                             sample_weight)


def test_regression_loss_definition():
    rng = np.random.default_rng(1)
    X, y = regression_data(rng, n_samples=6, n_outputs=2)
    model = GRURegressor(hidden_size=3, alpha=0.0, dtype="float64", max_iter=1,
                         random_state=0).fit(X, y)
    batch = estimators_module.check_sequences(X, dtype="float64")
    loss, _ = model._loss_and_gradients(batch.values, batch.lengths, y, None)
    np.testing.assert_allclose(loss, 0.5 * np.mean((model.predict(X) - y) ** 2))
    model.set_params(alpha=2.0)
    loss_l2, _ = model._loss_and_gradients(batch.values, batch.lengths, y, None)
    weights = [model.head_weight_] + [
        v for k, v in model.gru_.params.items() if k.startswith("weight")]
    penalty = 0.5 * 2.0 * sum(float(np.sum(w ** 2)) for w in weights) / 6
    np.testing.assert_allclose(loss_l2 - loss, penalty)


# ---------------------------------------------------------- fit / predict

def test_regressor_fitted_attributes_and_shapes():
    rng = np.random.default_rng(0)
    X, y = regression_data(rng)
    model = GRURegressor(**TINY).fit(X, y)
    assert isinstance(model.gru_, numgru.GRU)
    assert model.head_weight_.shape == (1, 4)
    assert model.head_bias_.shape == (1,)
    assert model.n_outputs_ == 1 and model.n_features_in_ == 2
    assert model.n_channels_ == 2 and model.input_kind_ == "list"
    assert model.n_iter_ == 3 and len(model.loss_curve_) == 3
    assert model.t_ == 3 * 24
    assert model.validation_scores_ is None
    assert model.best_validation_score_ is None
    assert model.best_loss_ == min(model.loss_curve_)
    pred = model.predict(X)
    assert pred.shape == (24,) and pred.dtype == np.float64

    Y = np.column_stack([y, -y, 2 * y])
    multi = GRURegressor(**TINY).fit(X, Y)
    assert multi.predict(X).shape == (24, 3)
    assert multi.head_weight_.shape == (3, 4) and multi.n_outputs_ == 3


def test_regressor_learns():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 6, 1))
    y = X[:, :, 0].sum(axis=1)
    model = GRURegressor(hidden_size=8, max_iter=60, learning_rate_init=1e-2,
                         random_state=0, n_jobs=1).fit(X, y)
    assert model.loss_curve_[-1] < 0.25 * model.loss_curve_[0]
    assert model.score(X, y) > 0.8


def test_classifier_labels_and_probabilities():
    rng = np.random.default_rng(0)
    X, y = classification_data(rng, n_samples=60)
    model = GRUClassifier(hidden_size=8, max_iter=40, learning_rate_init=1e-2,
                          random_state=0, n_jobs=1).fit(X, y)
    assert list(model.classes_) == ["a", "b", "c"]
    assert model.head_weight_.shape == (3, 8) and model.n_outputs_ == 3
    proba = model.predict_proba(X)
    assert proba.shape == (60, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    np.testing.assert_allclose(np.exp(model.predict_log_proba(X)), proba)
    pred = model.predict(X)
    assert set(pred) <= {"a", "b", "c"}
    np.testing.assert_array_equal(pred, model.classes_[proba.argmax(axis=1)])
    assert model.score(X, y) > 0.9


def test_binary_and_integer_labels():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 5))
    y = np.where(X.mean(axis=1) > 0, 7, -1)
    model = GRUClassifier(hidden_size=6, max_iter=30, learning_rate_init=1e-2,
                          random_state=0, n_jobs=1).fit(X, y)
    assert list(model.classes_) == [-1, 7]
    assert model.predict_proba(X).shape == (40, 2)
    assert model.predict(X).dtype == y.dtype
    assert model.score(X, y) > 0.8


def test_single_class_is_an_error():
    with pytest.raises(ValueError, match="class"):
        GRUClassifier(**TINY).fit(np.ones((5, 3)), ["x"] * 5)


def test_input_kinds_agree():
    rng = np.random.default_rng(0)
    X3 = rng.normal(size=(12, 5, 1))
    y = X3.sum(axis=(1, 2))
    X2 = X3[:, :, 0]
    X_list_2d = list(X3)
    X_list_1d = list(X2)
    predictions = []
    for X in (X2, X3, X_list_2d, X_list_1d):
        model = GRURegressor(**TINY).fit(X, y)
        predictions.append(model.predict(X))
    for pred in predictions[1:]:
        np.testing.assert_array_equal(pred, predictions[0])
    model_2d = GRURegressor(**TINY).fit(X2, y)
    assert model_2d.n_features_in_ == 5 and model_2d.input_kind_ == "2d"
    # a univariate model also takes 3d or list input of any length
    assert model_2d.predict(rng.normal(size=(3, 8, 1))).shape == (3,)
    assert model_2d.predict([np.ones(2), np.ones(9)]).shape == (2,)
    model_3d = GRURegressor(**TINY).fit(X3, y)
    assert model_3d.n_features_in_ == 1 and model_3d.input_kind_ == "3d"
    assert model_3d.predict(rng.normal(size=(3, 11))).shape == (3,)


def test_no_padding_leak_and_batch_independence():
    rng = np.random.default_rng(0)
    X, y = regression_data(rng)
    model = GRURegressor(**TINY).fit(X, y)
    together = model.predict(X)
    alone = np.array([model.predict([x])[0] for x in X])
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-7)
    # a short series padded into a batch with a long one
    short, long_ = X[0][:2], rng.normal(size=(30, 2))
    np.testing.assert_allclose(model.predict([short, long_])[0],
                               model.predict([short])[0], rtol=1e-6, atol=1e-7)

    clf = GRUClassifier(bidirectional=True, num_layers=2, **TINY)
    Xc, yc = classification_data(rng)
    clf.fit(Xc, yc)
    np.testing.assert_allclose(
        clf.predict_proba(Xc)[:5],
        np.vstack([clf.predict_proba([x]) for x in Xc[:5]]),
        rtol=1e-5, atol=1e-7)


def test_bidirectional_readout_uses_both_final_states():
    rng = np.random.default_rng(0)
    X, y = regression_data(rng)
    model = GRURegressor(bidirectional=True, num_layers=2, dropout=0.2,
                         **TINY).fit(X, y)
    assert model.head_weight_.shape == (1, 8)
    batch = estimators_module.check_sequences(X, dtype="float32")
    _, h_n = model.gru_.forward(batch.values, lengths=batch.lengths)
    features = np.concatenate([h_n[-2], h_n[-1]], axis=1)
    expected = features @ model.head_weight_.T + model.head_bias_
    np.testing.assert_allclose(model.predict(X), expected[:, 0], rtol=1e-6)


# -------------------------------------------------------------- validation

def _fitted_3d():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 4, 3))
    return GRURegressor(**TINY).fit(X, X.sum(axis=(1, 2)))


@pytest.mark.parametrize("X, y, error, match", [
    (np.full((4, 3, 2), np.nan), np.ones(4), ValueError, "NaN"),
    (np.full((4, 3, 2), np.inf), np.ones(4), ValueError, "infinity"),
    (np.ones((4, 3, 2, 1)), np.ones(4), ValueError, "dim"),
    (np.ones(4), np.ones(4), ValueError, "2D array"),
    (np.ones((0, 3, 2)), np.ones(0), ValueError, "0 sample"),
    (np.ones((0, 3)), np.ones(0), ValueError, "0 sample"),
    ([], [], ValueError, "empty"),
    ([np.ones((3, 2)), np.ones((3, 1))], [1, 2], ValueError,
     "same number of features"),
    ([np.ones((3, 2)), np.ones((0, 2))], [1, 2], ValueError, "zero time steps"),
    (np.ones((4, 0, 2)), np.ones(4), ValueError, "zero time steps"),
    (np.ones((4, 3, 2)), None, ValueError, "requires y"),
    (np.ones((4, 3, 2)), np.ones(5), ValueError, "inconsistent numbers"),
    (np.array([["a", "b"], ["c", "d"]]), np.ones(2), ValueError, "convert"),
    ([np.array([["a"], ["b"]])], [1.0], ValueError, "numbers"),
    (np.ones((4, 3, 2)), np.full(4, np.nan), ValueError, "NaN"),
])
def test_fit_input_errors(X, y, error, match):
    with pytest.raises(error, match=match):
        GRURegressor(**TINY).fit(X, y)


def test_predict_input_errors():
    model = _fitted_3d()
    with pytest.raises(ValueError, match="3 features per time step"):
        model.predict(np.ones((2, 4, 2)))
    with pytest.raises(ValueError, match="univariate"):
        model.predict(np.ones((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        model.predict([np.ones((2, 3)), np.full((2, 3), np.nan)])
    # 2d models keep scikit-learn's column-count contract
    model_2d = GRURegressor(**TINY).fit(np.ones((6, 5)), np.arange(6.0))
    with pytest.raises(ValueError, match="expecting 5 features"):
        model_2d.predict(np.ones((2, 4)))
    with pytest.raises(ValueError, match="features per time step"):
        model_2d.predict(np.ones((2, 4, 3)))
    with pytest.raises(NotFittedError, match="GRURegressor instance is not fitted"):
        GRURegressor().predict(np.ones((2, 4)))
    with pytest.raises(NotFittedError, match="GRUClassifier instance is not fitted"):
        GRUClassifier().predict_proba(np.ones((2, 4)))


def test_classifier_target_errors():
    X = np.ones((6, 3))
    with pytest.raises(ValueError, match="Unknown label type"):
        GRUClassifier(**TINY).fit(X, np.linspace(0, 1, 6))
    with pytest.raises(ValueError, match="requires y"):
        GRUClassifier(**TINY).fit(X, None)


@pytest.mark.parametrize("params, match", [
    ({"hidden_size": 0}, "hidden_size"),
    ({"solver": "lbfgs"}, "solver"),
    ({"batch_size": 0}, "batch_size"),
    ({"dropout": 1.0}, "dropout"),
    ({"backend": "gpu"}, "backend"),
    ({"dtype": "float16"}, "dtype"),
    ({"clip_grad_norm": -1.0}, "clip_grad_norm"),
    ({"validation_fraction": 1.0}, "validation_fraction"),
    ({"n_jobs": 0}, "n_jobs"),
])
def test_parameter_validation(params, match):
    with pytest.raises(ValueError, match=match):
        GRURegressor(**params).fit(np.ones((4, 3)), np.ones(4))


# -------------------------------------------------------------- training

def test_convergence_warning_and_tol_stop():
    X = np.random.default_rng(0).normal(size=(16, 4))
    y = X.sum(axis=1)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        GRURegressor(hidden_size=3, max_iter=2, random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = GRURegressor(hidden_size=3, max_iter=50, tol=1e3,
                             n_iter_no_change=2, random_state=0).fit(X, y)
    # first epoch sets best_loss_, then n_iter_no_change + 1 without progress
    assert model.n_iter_ == 4


def test_early_stopping_restores_best_weights(monkeypatch):
    rng = np.random.default_rng(0)
    X, y = classification_data(rng, n_samples=60)
    splits = []
    original_split = estimators_module.train_test_split

    def recording_split(*args, **kwargs):
        result = original_split(*args, **kwargs)
        splits.append(result)
        return result

    monkeypatch.setattr(estimators_module, "train_test_split", recording_split)
    model = GRUClassifier(hidden_size=6, max_iter=15, early_stopping=True,
                          validation_fraction=0.3, n_iter_no_change=3,
                          learning_rate_init=0.05, random_state=0)
    model.fit(X, y)
    assert model.best_loss_ is None
    assert len(model.validation_scores_) == model.n_iter_
    assert model.best_validation_score_ == max(model.validation_scores_)
    _, val_indices = splits[0]
    assert len(val_indices) == 18
    X_val = [X[i] for i in val_indices]
    assert model.score(X_val, y[val_indices]) == model.best_validation_score_
    with pytest.raises(ValueError, match="early_stopping"):
        model.partial_fit(X, y)


def test_sample_weight_equivalences_with_full_batches():
    rng = np.random.default_rng(0)
    X, y = regression_data(rng, n_samples=12)
    common = dict(hidden_size=4, max_iter=5, batch_size=100, shuffle=False,
                  random_state=0, dtype="float64")
    reference = GRURegressor(**common).fit(X, y)
    ones = GRURegressor(**common).fit(X, y, sample_weight=np.ones(12))
    np.testing.assert_allclose(ones.predict(X), reference.predict(X),
                               rtol=1e-10)
    # zero weight = sample removed (full batches, same initialisation)
    extra_X = X + ragged_series(rng, 5)
    extra_y = np.concatenate([y, rng.normal(size=5) * 100])
    zeros = GRURegressor(**common).fit(
        extra_X, extra_y, sample_weight=np.r_[np.ones(12), np.zeros(5)])
    np.testing.assert_allclose(zeros.predict(X), reference.predict(X),
                               rtol=1e-8)
    # integer weight = repeated sample
    repeated = GRURegressor(**common).fit(X + X[:3], np.r_[y, y[:3]])
    weighted = GRURegressor(**common).fit(
        X, y, sample_weight=np.r_[2.0, 2.0, 2.0, np.ones(9)])
    np.testing.assert_allclose(weighted.predict(X), repeated.predict(X),
                               rtol=1e-8)
    with pytest.raises(ValueError, match="(?i)negative"):
        GRURegressor(**common).fit(X, y, sample_weight=-np.ones(12))


def test_partial_fit_and_warm_start():
    rng = np.random.default_rng(0)
    X, y = classification_data(rng)
    with pytest.raises(ValueError, match="classes must be passed"):
        GRUClassifier(**TINY).partial_fit(X, y)
    model = GRUClassifier(**TINY)
    model.partial_fit(X[:10], y[:10], classes=["a", "b", "c", "d"])
    assert list(model.classes_) == ["a", "b", "c", "d"]
    assert model.n_iter_ == 1
    before = all_params(model)
    model.partial_fit(X[10:], y[10:])
    assert model.n_iter_ == 2 and model.t_ == len(X)
    assert any(not np.array_equal(a, b)
               for a, b in zip(before, all_params(model)))
    with pytest.raises(ValueError, match="not seen in classes_"):
        model.partial_fit(X[:2], ["a", "z"])

    reg = GRURegressor(**TINY)
    Xr, yr = regression_data(rng)
    reg.partial_fit(Xr, yr)
    reg.partial_fit(Xr, yr)
    assert reg.n_iter_ == 2 and len(reg.loss_curve_) == 2

    warm = GRURegressor(warm_start=True, **TINY).fit(Xr, yr)
    first_weights = all_params(warm)
    cold_twice = GRURegressor(**TINY).fit(Xr, yr).fit(Xr, yr)
    warm.fit(Xr, yr)
    assert len(warm.loss_curve_) == 6
    assert not np.array_equal(warm.head_weight_, cold_twice.head_weight_)
    assert not np.array_equal(first_weights[-2], warm.head_weight_)
    with pytest.raises(ValueError, match="features per time step"):
        warm.fit([x[:, :1] for x in Xr], yr)


@pytest.mark.parametrize("solver, extra", [
    ("sgd", dict(momentum=0.9, nesterovs_momentum=True)),
    ("sgd", dict(momentum=0.5, nesterovs_momentum=False)),
    ("adam", dict(clip_grad_norm=0.5)),
])
def test_solvers_reduce_loss(solver, extra):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(48, 5, 1))
    y = X[:, :, 0].sum(axis=1)
    model = GRURegressor(hidden_size=6, max_iter=25, solver=solver,
                         learning_rate_init=0.02, random_state=0, n_jobs=1,
                         **extra)
    model.fit(X, y)
    assert model.loss_curve_[-1] < 0.6 * model.loss_curve_[0]


def test_optimizers_and_clipping():
    params = [np.ones(3, dtype=np.float32), np.zeros((2, 2), dtype=np.float32)]
    grads = [np.full(3, 3.0, np.float32), np.full((2, 2), 4.0, np.float32)]
    norm = clip_grad_norm(grads, 1.0)
    np.testing.assert_allclose(norm, np.sqrt(27 + 64))
    np.testing.assert_allclose(
        np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads)), 1.0,
        rtol=1e-5)
    sgd = SGDOptimizer(params, learning_rate_init=0.1, momentum=0.0,
                       nesterov=False)
    sgd.update_params(params, [np.ones(3, np.float32), np.ones((2, 2), np.float32)])
    np.testing.assert_allclose(params[0], 0.9)
    assert params[0].dtype == np.float32
    adam = AdamOptimizer(params, learning_rate_init=0.01)
    adam.update_params(params, [np.ones(3, np.float32), -np.ones((2, 2), np.float32)])
    # Adam's first step has size learning_rate in the direction of -sign(grad)
    np.testing.assert_allclose(params[0], 0.89, rtol=1e-5)
    np.testing.assert_allclose(params[1], 0.01 - 0.1, rtol=1e-4)


def _adam_per_parameter(params, grads_per_step, lr=0.01, beta_1=0.9,
                        beta_2=0.999, epsilon=1e-8):
    """Adam written out one parameter array at a time (scikit-learn's form)."""
    ms = [np.zeros_like(p) for p in params]
    vs = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        rate = lr * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        for p, m, v, g in zip(params, ms, vs, grads):
            cast = p.dtype.type
            m *= cast(beta_1)
            m += cast(1 - beta_1) * g
            v *= cast(beta_2)
            v += cast(1 - beta_2) * (g * g)
            p += cast(-rate) * m / (np.sqrt(v) + cast(epsilon))
    return ms, vs


def _sgd_per_parameter(params, grads_per_step, lr, momentum, nesterov):
    velocities = [np.zeros_like(p) for p in params]
    for grads in grads_per_step:
        for p, velocity, g in zip(params, velocities, grads):
            cast = p.dtype.type
            velocity *= cast(momentum)
            velocity -= cast(lr) * g
            if nesterov:
                p += cast(momentum) * velocity - cast(lr) * g
            else:
                p += velocity
    return velocities


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizers_match_per_parameter_formulas_bitwise(dtype, compiled,
                                                         monkeypatch):
    # Adam runs as one compiled pass once the Numba kernels are loaded, else
    # as numpy operations over the flat state: both must give these bits
    if compiled:
        pytest.importorskip("numba")
        from numgru import _numba_kernels  # noqa: F401  (loads the kernel)
        assert optim_module._adam_kernel() is not None
    else:
        monkeypatch.setattr(optim_module, "_adam_kernel", lambda: None)
    rng = np.random.default_rng(0)
    shapes = [(6, 3), (6, 2), (6,), (2, 2), (2,)]
    start = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    steps = [[(rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 3, shape))
              .astype(dtype) for shape in shapes] for _ in range(5)]
    steps[2][0][0] = 0

    want = [p.copy() for p in start]
    want_ms, want_vs = _adam_per_parameter(want, steps)
    got = [p.copy() for p in start]
    adam = AdamOptimizer(got, learning_rate_init=0.01)
    for grads in steps:
        adam.update_params(got, [g.copy() for g in grads])
    for pairs in (zip(got, want), zip(adam.ms, want_ms), zip(adam.vs, want_vs)):
        for a, b in pairs:
            assert a.shape == b.shape and a.tobytes() == b.tobytes()

    for nesterov in (True, False):
        want = [p.copy() for p in start]
        want_velocities = _sgd_per_parameter(want, steps, 0.1, 0.9, nesterov)
        got = [p.copy() for p in start]
        sgd = SGDOptimizer(got, 0.1, 0.9, nesterov)
        for grads in steps:
            sgd.update_params(got, [g.copy() for g in grads])
        for a, b in zip(got + sgd.velocities, want + want_velocities):
            assert a.shape == b.shape and a.tobytes() == b.tobytes()


def test_optimizer_pickled_with_per_parameter_state_goes_on():
    rng = np.random.default_rng(1)
    shapes = [(3, 2), (4,)]
    start = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    steps = [[rng.standard_normal(shape).astype(np.float32) for shape in shapes]
             for _ in range(3)]
    straight = [p.copy() for p in start]
    adam = AdamOptimizer(straight, learning_rate_init=0.01)
    for grads in steps:
        adam.update_params(straight, grads)

    resumed = [p.copy() for p in start]
    first = AdamOptimizer(resumed, learning_rate_init=0.01)
    first.update_params(resumed, steps[0])
    # the state as optimizers that kept one array per parameter pickled it
    listed = {name: value for name, value in vars(first).items()
              if name not in ("_m", "_v", "_shapes", "_dtype")}
    listed.update(ms=[m.copy() for m in first.ms], vs=[v.copy() for v in first.vs])
    restored = AdamOptimizer.__new__(AdamOptimizer)
    restored.__setstate__(listed)
    for grads in steps[1:]:
        restored.update_params(resumed, grads)
    for a, b in zip(resumed, straight):
        assert a.tobytes() == b.tobytes()
    again = pickle.loads(pickle.dumps(restored))
    assert [m.shape for m in again.ms] == shapes


def test_optimizer_input_errors():
    with pytest.raises(ValueError, match="share one dtype"):
        AdamOptimizer([np.zeros(2, np.float32), np.zeros(2, np.float64)])
    params = [np.zeros((2, 3)), np.zeros(3)]
    sgd = SGDOptimizer(params)
    with pytest.raises(ValueError, match="one gradient per parameter"):
        sgd.update_params(params, [np.zeros((2, 3))])
    with pytest.raises(ValueError, match=r"got one of shape \(3, 2\)"):
        sgd.update_params(params, [np.zeros((3, 2)), np.zeros(3)])


def test_verbose_lines():
    X = np.random.default_rng(0).normal(size=(30, 4))
    y = (X.sum(axis=1) > 0).astype(int)
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        GRUClassifier(hidden_size=3, max_iter=2, verbose=True,
                      early_stopping=True, validation_fraction=0.2,
                      random_state=0).fit(X, y)
    lines = buffer.getvalue().strip().splitlines()
    assert len(lines) == 2
    pattern = (r"Iteration \d+, loss = \d+\.\d+, validation score = "
               r"\d+\.\d+, time = \d+\.\d+s")
    assert all(re.fullmatch(pattern, line) for line in lines)


# ------------------------------------------------- determinism and threads

def test_reproducible_and_thread_independent():
    rng = np.random.default_rng(0)
    X, y = classification_data(rng, n_samples=40)
    params = dict(hidden_size=8, max_iter=3, batch_size=8, num_layers=2,
                  dropout=0.3, bidirectional=True, random_state=42)
    one = GRUClassifier(n_jobs=1, **params).fit(X, y)
    two = GRUClassifier(n_jobs=2, **params).fit(X, y)
    for a, b in zip(all_params(one), all_params(two)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(one.predict_proba(X), two.predict_proba(X))
    again = GRUClassifier(n_jobs=1, **params).fit(X, y)
    np.testing.assert_array_equal(again.head_weight_, one.head_weight_)
    other = GRUClassifier(n_jobs=1, **{**params, "random_state": 1}).fit(X, y)
    assert not np.array_equal(other.head_weight_, one.head_weight_)


def test_n_jobs_restores_thread_count():
    numgru.set_num_threads(2)
    X = np.ones((6, 3))
    model = GRURegressor(**TINY).fit(X, np.arange(6.0))
    assert numgru.get_num_threads() == 2
    model.predict(X)
    assert numgru.get_num_threads() == 2


# -------------------------------------------------- scikit-learn ecosystem

def test_pipeline_grid_search_cross_val_with_lists():
    rng = np.random.default_rng(0)
    X, y = classification_data(rng, n_samples=30)
    pipe = make_pipeline(SequenceScaler(), GRUClassifier(**TINY))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,)
    search = GridSearchCV(pipe, {"gruclassifier__hidden_size": [2, 3]}, cv=2)
    search.fit(X, y)
    assert search.best_params_["gruclassifier__hidden_size"] in (2, 3)
    assert search.predict(X).shape == (30,)
    cloned = clone(pipe)
    assert cloned.get_params()["gruclassifier__hidden_size"] == 4
    assert not hasattr(cloned[-1], "gru_")


def test_pickle_and_joblib_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    X, y = classification_data(rng)
    model = GRUClassifier(**TINY).fit(X, y)
    data = pickle.dumps(model)
    for marker in (b"Dispatcher", b"numba.core", b"_cython_kernels"):
        assert marker not in data
    restored = pickle.loads(data)
    np.testing.assert_array_equal(restored.predict_proba(X),
                                  model.predict_proba(X))
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    np.testing.assert_array_equal(joblib.load(path).predict_proba(X),
                                  model.predict_proba(X))
    # a restored model keeps training
    restored.partial_fit(X, y)


def test_pickle_predicts_identically_in_another_process(tmp_path):
    rng = np.random.default_rng(0)
    X, y = regression_data(rng)
    model = GRURegressor(bidirectional=True, **TINY).fit(X, y)
    model_path = tmp_path / "model.pkl"
    data_path = tmp_path / "X.pkl"
    out_path = tmp_path / "pred.npy"
    model_path.write_bytes(pickle.dumps(model))
    data_path.write_bytes(pickle.dumps(X))
    script = (
        "import pickle, sys, numpy as np\n"
        "model = pickle.load(open(sys.argv[1], 'rb'))\n"
        "X = pickle.load(open(sys.argv[2], 'rb'))\n"
        "np.save(sys.argv[3], model.predict(X))\n")
    subprocess.run([sys.executable, "-c", script, str(model_path),
                    str(data_path), str(out_path)], check=True, timeout=300,
                   cwd=str(tmp_path),
                   env={**os.environ,
                        "PYTHONPATH": os.pathsep.join(sys.path)})
    np.testing.assert_array_equal(np.load(out_path), model.predict(X))


# ------------------------------------------------------------------ quality

def test_japanese_vowels_accuracy():
    X_train, y_train = load_japanese_vowels("train")
    X_test, y_test = load_japanese_vowels("test")
    # one thread keeps the timing steady on a busy machine; results do not
    # depend on the thread count
    classifier = GRUClassifier(hidden_size=64, max_iter=100, batch_size=32,
                               learning_rate_init=1e-3, random_state=0,
                               n_jobs=1)
    model = make_pipeline(SequenceScaler(), classifier)
    start = time.perf_counter()
    model.fit(X_train, y_train)
    fit_time = time.perf_counter() - start
    accuracy = model.score(X_test, y_test)
    print(f"Japanese Vowels: accuracy {accuracy:.4f}, fit {fit_time:.1f} s, "
          f"{classifier.n_iter_} epochs")
    assert accuracy >= 0.95


@pytest.mark.parametrize("backend", numgru.available_backends())
def test_backends_give_the_same_model(backend):
    rng = np.random.default_rng(0)
    X, y = classification_data(rng, n_samples=16)
    params = dict(hidden_size=4, max_iter=2, batch_size=8, random_state=0,
                  n_jobs=1, dtype="float64")
    reference = GRUClassifier(backend="numpy", **params).fit(X, y)
    model = GRUClassifier(backend=backend, **params).fit(X, y)
    np.testing.assert_allclose(model.predict_proba(X),
                               reference.predict_proba(X), rtol=1e-9)
    assert pickle.loads(pickle.dumps(model)).backend == backend


@pytest.mark.parametrize("n_samples", [1, 5, 32, 33, 1000])
@pytest.mark.parametrize("batch_size", [1, 7, 32, 1024])
def test_batches_match_gen_batches(n_samples, batch_size):
    assert (estimators_module._batches(n_samples, batch_size)
            == list(gen_batches(n_samples, batch_size)))
