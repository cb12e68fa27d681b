"""Small real data sets shipped with numgru, and a reader for ``.ts`` files.

The bundled files and their sources and licences are listed in
``numgru/datasets/data/README.md``.
"""

import csv
import io
import os
from importlib import resources

import numpy as np

__all__ = ["load_japanese_vowels", "load_airline", "load_ts"]

_DATA_PACKAGE = "numgru.datasets"


def _read_bundled_text(filename):
    """Return the text of a file in ``numgru/datasets/data``."""
    data_dir = resources.files(_DATA_PACKAGE).joinpath("data")
    return data_dir.joinpath(filename).read_text(encoding="utf-8")


def _parse_ts_value(token, line_number):
    token = token.strip()
    if token == "?":
        return np.nan
    try:
        return float(token)
    except ValueError:
        raise ValueError(
            f"line {line_number}: expected a number or '?', got {token!r}"
        ) from None


def _parse_ts_text(text, source="<string>"):
    """Parse the text of a ``.ts`` file; see :func:`load_ts`."""
    header = {}
    series = []
    labels = []
    in_data = False
    has_class_label = False
    has_target = False
    for line_number, raw_line in enumerate(io.StringIO(text), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise ValueError(
                    f"{source}, line {line_number}: expected a header line "
                    f"starting with '@' before '@data', got {line[:40]!r}"
                )
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            value = value.strip()
            if key == "data":
                in_data = True
                continue
            header[key] = value
            if key == "classlabel":
                has_class_label = value.split()[:1] == ["true"]
            elif key == "targetlabel":
                has_target = value.split()[:1] == ["true"]
            continue
        channel_texts = line.split(":")
        label = None
        if has_class_label or has_target:
            if len(channel_texts) < 2:
                raise ValueError(
                    f"{source}, line {line_number}: expected channels and a "
                    f"label separated by ':'"
                )
            label = channel_texts[-1].strip()
            channel_texts = channel_texts[:-1]
        channels = [
            [_parse_ts_value(tok, line_number) for tok in text_.split(",")]
            for text_ in channel_texts
        ]
        n_steps = {len(channel) for channel in channels}
        if len(n_steps) != 1:
            raise ValueError(
                f"{source}, line {line_number}: the channels of one series "
                f"have different lengths {sorted(n_steps)}"
            )
        series.append(np.asarray(channels, dtype=np.float64).T.copy())
        labels.append(label)
    if not in_data:
        raise ValueError(f"{source}: no '@data' line found")
    if not series:
        raise ValueError(f"{source}: no series after '@data'")
    n_channels = {s.shape[1] for s in series}
    if len(n_channels) != 1:
        raise ValueError(
            f"{source}: series have different numbers of channels "
            f"{sorted(n_channels)}"
        )
    if "dimensions" in header:
        declared = int(header["dimensions"])
        if declared != series[0].shape[1]:
            raise ValueError(
                f"{source}: header declares {declared} dimensions but the "
                f"series have {series[0].shape[1]}"
            )
    if has_target:
        y = np.asarray([float(label) for label in labels], dtype=np.float64)
    elif has_class_label:
        y = np.asarray(labels, dtype=str)
    else:
        y = None
    return series, y, header


def load_ts(path):
    """Read a time-series file in the UEA/UCR ``.ts`` format.

    Lines starting with ``#`` are comments, ``@name value`` lines form the
    header, and after ``@data`` each line holds one series: channels separated
    by ``:``, values of a channel separated by ``,``, and the label last when
    the header declares ``@classLabel true`` or ``@targetlabel true``.
    Missing values written ``?`` become NaN.

    Parameters
    ----------
    path : str or os.PathLike
        File to read.

    Returns
    -------
    X : list of ndarray of shape (n_timesteps_i, n_channels)
        One float64 array per series; series may differ in length.
    y : ndarray of shape (n_series,) or None
        Class labels as strings (``@classLabel``), float targets
        (``@targetlabel``), or None when the file has no labels.
    header : dict
        Header entries, keys lower-cased without the ``@``.
    """
    with open(os.fspath(path), encoding="utf-8") as handle:
        text = handle.read()
    return _parse_ts_text(text, source=os.fspath(path))


def load_japanese_vowels(split="train"):
    """Load the Japanese Vowels speaker-classification data set.

    Nine male speakers uttered the vowels "ae"; each utterance is a series of
    12 LPC cepstrum coefficients per frame, 7 to 29 frames long, and the task
    is to recognise the speaker. 270 training and 370 test series.
    Source: UCI Machine Learning Repository (Kudo, Toyama and Shimbo, 1999),
    CC BY 4.0.

    Parameters
    ----------
    split : {"train", "test"}, default="train"
        Which of the two standard splits to return.

    Returns
    -------
    X : list of ndarray of shape (n_timesteps_i, 12)
        One float64 array per utterance, of varying length.
    y : ndarray of shape (n_series,), dtype str
        Speaker labels ``"1"`` to ``"9"``.

    Examples
    --------
    >>> from numgru.datasets import load_japanese_vowels
    >>> X, y = load_japanese_vowels("train")
    >>> len(X), X[0].shape[1]
    (270, 12)
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    filename = f"JapaneseVowels_{split.upper()}.ts"
    X, y, _ = _parse_ts_text(_read_bundled_text(filename), source=filename)
    return X, y


def load_airline(return_dates=False):
    """Load the monthly international airline passenger counts, 1949 to 1960.

    The classic Box-Jenkins series G: 144 monthly totals (thousands of
    passengers), with a trend and a yearly seasonality that grows with the
    level. Public domain.

    Parameters
    ----------
    return_dates : bool, default=False
        Also return the months as ``numpy.datetime64`` values.

    Returns
    -------
    y : ndarray of shape (144,), dtype float64
        Passengers per month, in thousands.
    dates : ndarray of shape (144,), dtype datetime64[M]
        Only when ``return_dates`` is true.

    Examples
    --------
    >>> from numgru.datasets import load_airline
    >>> load_airline().shape
    (144,)
    """
    reader = csv.reader(io.StringIO(_read_bundled_text("Airline.csv")))
    next(reader)
    months, values = [], []
    for row in reader:
        if not row:
            continue
        months.append(row[0])
        values.append(float(row[1]))
    y = np.asarray(values, dtype=np.float64)
    if return_dates:
        return y, np.asarray(months, dtype="datetime64[M]")
    return y
