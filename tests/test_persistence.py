import json
import os
import zipfile

import numpy as np
import pytest

from numgru.estimators import GRUClassifier, GRURegressor
from numgru.persistence import FORMAT_NAME, load_model, save_model

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning")

TINY = dict(hidden_size=4, max_iter=2, batch_size=8, random_state=0, n_jobs=1)


def ragged(rng, n_samples=20, n_channels=3):
    return [rng.normal(size=(n, n_channels))
            for n in rng.integers(1, 8, size=n_samples)]


@pytest.fixture
def fitted_classifier():
    rng = np.random.default_rng(0)
    X = ragged(rng)
    y = np.array(["cat", "dog", "emu", "dog"] * 5, dtype=object)
    return GRUClassifier(bidirectional=True, num_layers=2, **TINY).fit(X, y), X


@pytest.mark.parametrize("make", [
    lambda rng: (GRURegressor(**TINY), ragged(rng), rng.normal(size=20)),
    lambda rng: (GRURegressor(dtype="float64", reset_after=False, **TINY),
                 rng.normal(size=(20, 5, 2)), rng.normal(size=(20, 3))),
    lambda rng: (GRUClassifier(**TINY), rng.normal(size=(20, 6)),
                 np.arange(20) % 3),
    lambda rng: (GRUClassifier(early_stopping=True, validation_fraction=0.3,
                               **TINY),
                 ragged(rng), np.arange(20) % 2 == 0),
])
def test_round_trip_is_bitwise(tmp_path, make):
    rng = np.random.default_rng(0)
    model, X, y = make(rng)
    model.fit(X, y)
    path = tmp_path / "model.npz"
    save_model(model, path)
    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    if hasattr(model, "classes_"):
        np.testing.assert_array_equal(loaded.classes_, model.classes_)
        assert loaded.classes_.dtype == model.classes_.dtype
        np.testing.assert_array_equal(loaded.predict_proba(X),
                                      model.predict_proba(X))
    for name in ("n_features_in_", "n_channels_", "input_kind_", "n_outputs_",
                 "n_iter_", "t_", "loss_curve_", "validation_scores_",
                 "best_loss_", "best_validation_score_"):
        assert getattr(loaded, name) == getattr(model, name), name
    # the loaded model can keep learning
    loaded.set_params(early_stopping=False)
    loaded.partial_fit(X, y)


def test_object_string_labels(tmp_path, fitted_classifier):
    model, X = fitted_classifier
    path = tmp_path / "model.npz"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.classes_.dtype == object
    assert list(loaded.predict(X)) == list(model.predict(X))


def test_feature_names_round_trip(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "model.npz"
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(10, 4)),
                         columns=list("abcd"))
    reg = GRURegressor(**TINY).fit(frame, np.arange(10.0))
    save_model(reg, path)
    loaded = load_model(path)
    assert list(loaded.feature_names_in_) == list("abcd")
    np.testing.assert_array_equal(loaded.predict(frame), reg.predict(frame))


def test_file_holds_only_plain_arrays(tmp_path, fitted_classifier):
    model, _ = fitted_classifier
    path = tmp_path / "model.npz"
    save_model(model, path)
    with np.load(path, allow_pickle=False) as archive:
        metadata = json.loads(str(archive["__numgru_metadata__"]))
        assert all(archive[key].dtype != object for key in archive.files)
        names = set(archive.files)
    assert metadata["format"] == FORMAT_NAME and metadata["version"] == 1
    assert metadata["estimator"] == "GRUClassifier"
    assert metadata["params"]["hidden_size"] == 4
    assert "gru/weight_ih_l1_reverse" in names and "head_weight" in names


def test_save_errors(tmp_path):
    with pytest.raises(ValueError, match="not fitted"):
        save_model(GRURegressor(), tmp_path / "m.npz")
    with pytest.raises(TypeError, match="GRURegressor or GRUClassifier"):
        save_model(object(), tmp_path / "m.npz")


def test_failed_save_keeps_existing_file(tmp_path, fitted_classifier,
                                         monkeypatch):
    model, _ = fitted_classifier
    path = tmp_path / "model.npz"
    save_model(model, path)
    before = path.read_bytes()

    def failing_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]


def _write_npz(path, **arrays):
    with open(path, "wb") as stream:
        np.savez(stream, **arrays)


def _rewrite_metadata(source, target, change):
    with np.load(source, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    metadata = json.loads(str(arrays["__numgru_metadata__"]))
    change(metadata, arrays)
    arrays["__numgru_metadata__"] = np.asarray(json.dumps(metadata))
    _write_npz(target, **arrays)


@pytest.mark.parametrize("corrupt, match", [
    (lambda p, good: p.write_bytes(b""), "not a valid numgru model"),
    (lambda p, good: p.write_bytes(b"hello, world"), "not a valid numgru model"),
    (lambda p, good: p.write_bytes(good.read_bytes()[:300]),
     "not a valid numgru model"),
    (lambda p, good: p.write_bytes(good.read_bytes()[:-200]),
     "not a valid numgru model"),
    (lambda p, good: np.save(open(p, "wb"), np.arange(3)), "single .npy"),
    (lambda p, good: _write_npz(p, weights=np.ones(3)), "metadata"),
    (lambda p, good: _write_npz(p, x=np.array([{"a": 1}], dtype=object)),
     "pickl"),
    (lambda p, good: _rewrite_metadata(
        good, p, lambda m, a: m.update(format="other")), "format"),
    (lambda p, good: _rewrite_metadata(
        good, p, lambda m, a: m.update(version=99)), "version"),
    (lambda p, good: _rewrite_metadata(
        good, p, lambda m, a: m.update(estimator="os.system")), "unknown estimator"),
    (lambda p, good: _rewrite_metadata(
        good, p, lambda m, a: a.pop("gru/weight_hh_l0")), "inconsistent"),
    (lambda p, good: _rewrite_metadata(
        good, p, lambda m, a: a.update(head_weight=np.ones((2, 2), np.float32))),
     "head_weight"),
    (lambda p, good: _write_npz(p, __numgru_metadata__=np.asarray("{not json")),
     "JSON"),
    (lambda p, good: _write_npz(p, __numgru_metadata__=np.arange(3)),
     "not a string"),
])
def test_load_rejects_bad_files(tmp_path, fitted_classifier, corrupt, match):
    model, _ = fitted_classifier
    good = tmp_path / "good.npz"
    save_model(model, good)
    bad = tmp_path / "bad.npz"
    corrupt(bad, good)
    with pytest.raises(ValueError, match=match):
        load_model(bad)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.npz")


def test_truncated_zip_members_are_detected(tmp_path, fitted_classifier):
    model, _ = fitted_classifier
    path = tmp_path / "model.npz"
    save_model(model, path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data[:-8] if name == "head_bias.npy" else data)
    with pytest.raises(ValueError, match="not a valid numgru model"):
        load_model(path)
