"""Save fitted estimators to a single ``.npz`` file and load them back.

The file is a plain numpy ``.npz`` archive (a zip of ``.npy`` arrays) with:

``__numgru_metadata__``
    A JSON string: the format name (``"numgru-model"``) and version, the
    estimator class, its ``get_params()``, the GRU configuration and the
    fitted scalar attributes.
``gru/<name>``
    Each GRU parameter, with PyTorch ``nn.GRU`` names.
``head_weight``, ``head_bias``
    The linear head.
``classes``
    The classifier's labels (numbers, booleans or strings).

Loading uses ``numpy.load(..., allow_pickle=False)`` and only reads arrays
and JSON, so a file can never run code. Unlike a pickle, the saved model
holds no optimizer state: it is meant for prediction (``warm_start`` or
``partial_fit`` after loading start a fresh optimizer).
"""

import io
import json
import os
import tempfile
import zipfile

import numpy as np

from numgru.estimators import GRUClassifier, GRURegressor
from numgru.gru import GRU

__all__ = ["save_model", "load_model"]

FORMAT_NAME = "numgru-model"
FORMAT_VERSION = 1
_METADATA_KEY = "__numgru_metadata__"
_ESTIMATOR_CLASSES = {cls.__name__: cls for cls in (GRURegressor, GRUClassifier)}
_FITTED_SCALARS = ("n_features_in_", "n_channels_", "input_kind_",
                   "n_outputs_", "n_iter_", "t_", "loss_", "best_loss_",
                   "best_validation_score_")
_FITTED_LISTS = ("loss_curve_", "validation_scores_")


def _json_number(value):
    """Float/int for JSON; non-finite floats become strings JSON can hold."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if np.isfinite(value):
            return value
        return repr(value)          # "inf", "-inf", "nan"
    return value


def _from_json_number(value):
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value


def _classes_array(classes):
    """``classes_`` as an array numpy can save without pickling."""
    classes = np.asarray(classes)
    if classes.dtype.kind in "biufU":
        return classes, "array"
    if classes.dtype.kind == "O" and all(isinstance(c, str) for c in classes):
        return classes.astype(str), "object_str"
    raise ValueError(
        f"save_model can store class labels that are numbers, booleans or "
        f"strings; got labels of dtype {classes.dtype} "
        f"({type(classes[0]).__name__})")


def save_model(estimator, path):
    """Save a fitted :class:`GRURegressor` or :class:`GRUClassifier`.

    The model is written to a temporary file next to ``path`` which then
    replaces ``path`` in one step, so an interrupted or failed save never
    leaves a partial file or destroys an existing one.

    Parameters
    ----------
    estimator : GRURegressor or GRUClassifier
        A fitted estimator.
    path : str or os.PathLike
        Destination file, written as is (``.npz`` is the customary suffix
        but is not added).

    Raises
    ------
    TypeError
        If ``estimator`` is not a numgru estimator.
    ValueError
        If it is not fitted, or its labels or parameters cannot be stored
        without pickling.

    Examples
    --------
    >>> from numgru.persistence import save_model, load_model
    >>> save_model(fitted_model, "model.npz")  # doctest: +SKIP
    >>> model = load_model("model.npz")  # doctest: +SKIP
    """
    cls_name = type(estimator).__name__
    if _ESTIMATOR_CLASSES.get(cls_name) is not type(estimator):
        raise TypeError(
            f"estimator must be a GRURegressor or GRUClassifier, got "
            f"{cls_name}")
    if not hasattr(estimator, "gru_"):
        raise ValueError(f"This {cls_name} instance is not fitted yet; fit "
                         f"it before saving")

    params = estimator.get_params()
    random_state = params.get("random_state")
    if random_state is not None and not isinstance(random_state, (int, np.integer)):
        params["random_state"] = None
    params = {key: _json_number(value) for key, value in params.items()}
    gru = estimator.gru_
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "estimator": cls_name,
        "params": params,
        "gru": {
            "input_size": int(gru.input_size),
            "hidden_size": int(gru.hidden_size),
            "num_layers": int(gru.num_layers),
            "bias": bool(gru.bias),
            "bidirectional": bool(gru.bidirectional),
            "reset_after": bool(gru.reset_after),
            "dropout": float(gru.dropout),
            "dtype": np.dtype(gru.dtype).name,
            "backend": gru.backend,
        },
        "fitted": {name: _json_number(getattr(estimator, name, None))
                   for name in _FITTED_SCALARS},
        "fitted_lists": {
            name: (None if getattr(estimator, name, None) is None else
                   [_json_number(v) for v in getattr(estimator, name)])
            for name in _FITTED_LISTS},
    }
    arrays = {f"gru/{name}": value for name, value in gru.params.items()}
    arrays["head_weight"] = estimator.head_weight_
    arrays["head_bias"] = estimator.head_bias_
    if hasattr(estimator, "classes_"):
        arrays["classes"], metadata["classes_kind"] = _classes_array(
            estimator.classes_)
    if hasattr(estimator, "feature_names_in_"):
        metadata["feature_names_in"] = [
            str(name) for name in estimator.feature_names_in_]
    arrays[_METADATA_KEY] = np.asarray(json.dumps(metadata))

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temp_path = tempfile.mkstemp(
        prefix=".numgru-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, allow_pickle=False, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except OSError:
            pass
        raise


def _invalid(path, reason):
    return ValueError(f"{path!s} is not a valid numgru model file: {reason}")


def _read_archive(path):
    """All arrays of an ``.npz`` file, read without pickling."""
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except IsADirectoryError:
        raise _invalid(path, "it is a directory") from None
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise _invalid(path, "it is a single .npy array, not an .npz "
                           "archive")
        with archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        if "not a valid numgru model file" in str(exc):
            raise
        raise _invalid(path, f"could not read it as an .npz archive without "
                       f"pickling ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError,
            NotImplementedError, RuntimeError) as exc:
        raise _invalid(path, f"could not read it as an .npz archive "
                       f"({type(exc).__name__}: {exc})") from None


def _expect(condition, path, reason):
    if not condition:
        raise _invalid(path, reason)


def load_model(path):
    """Load an estimator written by :func:`save_model`.

    Parameters
    ----------
    path : str or os.PathLike
        File written by :func:`save_model`.

    Returns
    -------
    estimator : GRURegressor or GRUClassifier
        Fitted estimator whose predictions are bitwise identical to those of
        the saved one.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a numgru model (corrupted, truncated, another
        program's file, or a newer format version).
    """
    path = os.fspath(path)
    arrays = _read_archive(path)
    _expect(_METADATA_KEY in arrays, path, "no numgru metadata entry")
    raw = arrays.pop(_METADATA_KEY)
    _expect(raw.shape == () and raw.dtype.kind == "U", path,
            "the metadata entry is not a string")
    try:
        metadata = json.loads(str(raw))
    except ValueError as exc:
        raise _invalid(path, f"the metadata is not valid JSON ({exc})") from None
    _expect(isinstance(metadata, dict), path, "the metadata is not a JSON object")
    _expect(metadata.get("format") == FORMAT_NAME, path,
            f"format is {metadata.get('format')!r}, expected {FORMAT_NAME!r}")
    version = metadata.get("version")
    _expect(isinstance(version, int) and 1 <= version <= FORMAT_VERSION, path,
            f"format version {version!r} is not supported (this numgru reads "
            f"versions up to {FORMAT_VERSION})")
    cls = _ESTIMATOR_CLASSES.get(metadata.get("estimator"))
    _expect(cls is not None, path,
            f"unknown estimator {metadata.get('estimator')!r}")
    for key in ("params", "gru", "fitted", "fitted_lists"):
        _expect(isinstance(metadata.get(key), dict), path,
                f"metadata entry {key!r} is missing or not an object")

    try:
        estimator = cls()
        valid_params = estimator.get_params()
        params = {key: _from_json_number(value)
                  for key, value in metadata["params"].items()
                  if key in valid_params}
        estimator.set_params(**params)
        gru_config = metadata["gru"]
        gru = GRU(gru_config["input_size"], gru_config["hidden_size"],
                  num_layers=gru_config["num_layers"],
                  bias=gru_config["bias"],
                  bidirectional=gru_config["bidirectional"],
                  reset_after=gru_config["reset_after"],
                  dropout=gru_config["dropout"], dtype=gru_config["dtype"],
                  backend=gru_config["backend"], random_state=0)
        state = {key[len("gru/"):]: value for key, value in arrays.items()
                 if key.startswith("gru/")}
        for name, value in state.items():
            _expect(value.dtype == gru.dtype, path,
                    f"parameter {name} has dtype {value.dtype}, expected "
                    f"{gru.dtype}")
        gru.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as exc:
        if "not a valid numgru model file" in str(exc):
            raise
        raise _invalid(path, f"inconsistent model description "
                       f"({type(exc).__name__}: {exc})") from None

    n_outputs = metadata["fitted"].get("n_outputs_")
    head_inputs = gru.hidden_size * gru.num_directions
    for key, shape in (("head_weight", (n_outputs, head_inputs)),
                       ("head_bias", (n_outputs,))):
        _expect(key in arrays, path, f"missing array {key!r}")
        _expect(arrays[key].shape == shape and arrays[key].dtype == gru.dtype,
                path, f"array {key!r} has shape {arrays[key].shape} and dtype "
                f"{arrays[key].dtype}, expected {shape} and {gru.dtype}")

    estimator.gru_ = gru
    estimator.head_weight_ = np.ascontiguousarray(arrays["head_weight"])
    estimator.head_bias_ = np.ascontiguousarray(arrays["head_bias"])
    for name in _FITTED_SCALARS:
        setattr(estimator, name, _from_json_number(metadata["fitted"].get(name)))
    for name in _FITTED_LISTS:
        values = metadata["fitted_lists"].get(name)
        setattr(estimator, name,
                None if values is None else [_from_json_number(v) for v in values])
    _expect(estimator.input_kind_ in ("2d", "3d", "list"), path,
            f"unknown input kind {estimator.input_kind_!r}")
    _expect(estimator.n_channels_ == gru.input_size, path,
            "n_channels_ does not match the GRU input size")
    if "feature_names_in" in metadata:
        estimator.feature_names_in_ = np.asarray(
            metadata["feature_names_in"], dtype=object)
    if cls is GRUClassifier:
        _expect("classes" in arrays, path, "a classifier without classes")
        classes = arrays["classes"]
        if metadata.get("classes_kind") == "object_str":
            classes = classes.astype(object)
        _expect(classes.shape == (n_outputs,), path,
                f"{classes.shape[0]} classes for {n_outputs} outputs")
        estimator.classes_ = classes
    return estimator
