import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import check_estimator

from numgru.preprocessing import SequenceScaler


def ragged(rng, n_channels=3, lengths=(5, 2, 7, 1)):
    return [rng.normal(3.0, 2.0, size=(length, n_channels)) for length in lengths]


def test_statistics_use_valid_steps_only():
    rng = np.random.default_rng(0)
    X = ragged(rng)
    scaler = SequenceScaler().fit(X)
    steps = np.concatenate(X)
    np.testing.assert_allclose(scaler.mean_, steps.mean(axis=0))
    np.testing.assert_allclose(scaler.scale_, steps.std(axis=0))
    assert scaler.n_steps_seen_ == steps.shape[0]
    assert scaler.n_features_in_ == 3 and scaler.input_kind_ == "list"


def test_list_round_trip_keeps_shapes():
    rng = np.random.default_rng(1)
    X = ragged(rng) + [rng.normal(size=4)[:, None]]
    scaler = SequenceScaler().fit(X[:-1])
    X_univariate = [rng.normal(size=n) for n in (3, 6)]
    with pytest.raises(ValueError, match="features per time step"):
        scaler.transform(X_univariate)
    Xt = scaler.transform(X[:-1])
    assert isinstance(Xt, list)
    assert [x.shape for x in Xt] == [x.shape for x in X[:-1]]
    steps = np.concatenate(Xt)
    np.testing.assert_allclose(steps.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(steps.std(axis=0), 1)
    back = scaler.inverse_transform(Xt)
    for original, restored in zip(X, back):
        np.testing.assert_allclose(restored, original)


def test_univariate_list_keeps_1d_items():
    X = [np.arange(4.0), np.arange(2.0) + 10]
    Xt = SequenceScaler().fit_transform(X)
    assert [x.shape for x in Xt] == [(4,), (2,)]


def test_3d_and_2d_kinds():
    rng = np.random.default_rng(2)
    X3 = rng.normal(size=(6, 4, 2)) * [1.0, 5.0] + [0.0, 10.0]
    Xt = SequenceScaler().fit_transform(X3)
    assert Xt.shape == X3.shape
    np.testing.assert_allclose(Xt.reshape(-1, 2).mean(axis=0), 0, atol=1e-12)

    X2 = rng.normal(size=(6, 4)) * 3 + 1
    scaler = SequenceScaler().fit(X2)
    # one channel: a single mean and scale over all steps
    assert scaler.mean_.shape == (1,)
    np.testing.assert_allclose(scaler.mean_, X2.mean())
    Xt2 = scaler.transform(X2)
    assert Xt2.shape == X2.shape
    np.testing.assert_allclose(Xt2, (X2 - X2.mean()) / X2.std())
    assert scaler.n_features_in_ == 4


def test_dtype_and_options():
    X = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    assert SequenceScaler().fit_transform(X).dtype == np.float32
    only_mean = SequenceScaler(with_std=False).fit(X)
    assert only_mean.scale_ is None
    np.testing.assert_allclose(only_mean.transform(X).reshape(-1, 3).mean(0), 0)
    only_std = SequenceScaler(with_mean=False).fit(X)
    assert only_std.mean_ is None
    constant = np.ones((3, 5, 2))
    np.testing.assert_array_equal(SequenceScaler().fit_transform(constant), 0)


@pytest.mark.parametrize("X, error, match", [
    ([], ValueError, "empty"),
    ([np.ones((3, 2)), np.ones((0, 2))], ValueError, "zero time steps"),
    ([np.ones((3, 2)), np.ones((3, 3))], ValueError, "same number of features"),
    ([np.ones((3, 2)), np.array([[np.nan, 1.0]])], ValueError, "NaN"),
    ([np.ones((2, 2, 2))], ValueError, "dimensions"),
    (np.ones((2, 3, 1)) * np.inf, ValueError, "infinity"),
    ([np.array([["a", "b"]])], ValueError, "numbers"),
])
def test_invalid_input(X, error, match):
    with pytest.raises(error, match=match):
        SequenceScaler().fit(X)


def test_clone_and_pickle():
    X = [np.arange(6.0).reshape(3, 2), np.arange(4.0).reshape(2, 2)]
    scaler = SequenceScaler().fit(X)
    restored = pickle.loads(pickle.dumps(scaler))
    for a, b in zip(restored.transform(X), scaler.transform(X)):
        np.testing.assert_array_equal(a, b)
    assert clone(scaler).get_params() == scaler.get_params()


def test_sklearn_compatible():
    check_estimator(SequenceScaler())


def test_partial_fit_equals_fit_on_everything():
    rng = np.random.default_rng(5)
    X = ragged(rng, lengths=(5, 2, 7, 1, 9, 4))
    X[3] = X[3] + 50.0     # batches with different means
    whole = SequenceScaler().fit(X)
    parts = SequenceScaler()
    for start in (0, 1, 4):
        parts.partial_fit(X[start:{0: 1, 1: 4, 4: 6}[start]])
    assert parts.n_steps_seen_ == whole.n_steps_seen_
    np.testing.assert_allclose(parts.mean_, whole.mean_, rtol=1e-12)
    np.testing.assert_allclose(parts.var_, whole.var_, rtol=1e-12)
    np.testing.assert_allclose(parts.scale_, whole.scale_, rtol=1e-12)
    # fit starts over; partial_fit keeps the number of features
    parts.fit(X[:2])
    assert parts.n_steps_seen_ == 7
    with pytest.raises(ValueError, match="features"):
        parts.partial_fit([rng.normal(size=(3, 2))])


def test_partial_fit_without_mean_or_std():
    rng = np.random.default_rng(6)
    X = rng.normal(2.0, 3.0, size=(6, 8, 2))
    for params in ({"with_mean": False}, {"with_std": False}):
        whole = SequenceScaler(**params).fit(X)
        parts = SequenceScaler(**params).partial_fit(X[:2]).partial_fit(X[2:])
        np.testing.assert_allclose(parts.transform(X), whole.transform(X),
                                   rtol=1e-12, atol=1e-12)
