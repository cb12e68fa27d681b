import numpy as np
import pytest

from numgru.datasets import load_airline, load_japanese_vowels, load_ts


@pytest.mark.parametrize("split, n_series", [("train", 270), ("test", 370)])
def test_japanese_vowels_shapes(split, n_series):
    X, y = load_japanese_vowels(split)
    assert len(X) == n_series
    assert y.shape == (n_series,)
    assert all(x.ndim == 2 and x.shape[1] == 12 for x in X)
    assert all(x.dtype == np.float64 for x in X)
    lengths = [x.shape[0] for x in X]
    assert 7 <= min(lengths) and max(lengths) <= 29
    assert sorted(np.unique(y)) == [str(i) for i in range(1, 10)]
    assert all(np.isfinite(x).all() for x in X)


def test_japanese_vowels_first_values():
    X, y = load_japanese_vowels("train")
    assert X[0].shape == (20, 12)
    np.testing.assert_allclose(X[0][:3, 0], [1.860936, 1.891651, 1.939205])
    np.testing.assert_allclose(X[0][0, 1], -0.207383)
    assert y[0] == "1" and y[-1] == "9"


def test_japanese_vowels_bad_split():
    with pytest.raises(ValueError, match="split"):
        load_japanese_vowels("validation")


def test_airline():
    y = load_airline()
    assert y.shape == (144,) and y.dtype == np.float64
    assert y[0] == 112 and y[-1] == 432
    values, dates = load_airline(return_dates=True)
    assert dates[0] == np.datetime64("1949-01")
    assert dates[-1] == np.datetime64("1960-12")


def test_load_ts_variants(tmp_path):
    text = """# comment
@problemName toy
@dimensions 2
@equalLength false
@classLabel true a b
@data
1,2,3:4,5,6:a
7,?:8,9:b
"""
    path = tmp_path / "toy.ts"
    path.write_text(text)
    X, y, header = load_ts(path)
    assert header["problemname"] == "toy"
    assert [x.shape for x in X] == [(3, 2), (2, 2)]
    np.testing.assert_array_equal(X[0][:, 1], [4, 5, 6])
    assert np.isnan(X[1][1, 0])
    assert list(y) == ["a", "b"]

    path.write_text("@targetlabel true\n@data\n1,2:0.5\n3:1.5\n")
    X, y, _ = load_ts(path)
    assert y.dtype == np.float64 and list(y) == [0.5, 1.5]
    assert [x.shape for x in X] == [(2, 1), (1, 1)]


@pytest.mark.parametrize("text, match", [
    ("@classLabel true a\n1,2:a\n", "header"),
    ("@classLabel true a\n", "@data"),
    ("@classLabel true a\n@data\n1,2:3:a\n", "different lengths"),
    ("@classLabel true a\n@data\n1,x:a\n", "expected a number"),
    ("@dimensions 3\n@classLabel true a\n@data\n1,2:a\n", "dimensions"),
])
def test_load_ts_errors(tmp_path, text, match):
    path = tmp_path / "bad.ts"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_ts(path)
