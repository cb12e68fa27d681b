"""Command-line interface: ``numgru <command> [options]``.

Each command is a :class:`Command` in ``COMMANDS``: a name, a help line, a
function adding its options to an :mod:`argparse` sub-parser, and a function
running it on the parsed arguments and returning an exit code. Adding a
command means appending one more entry.
"""

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["main", "build_parser", "Command", "COMMANDS", "warm_up"]


@dataclass(frozen=True)
class Command:
    """One sub-command of the ``numgru`` program.

    Attributes
    ----------
    name : str
        Word typed after ``numgru``.
    help : str
        One-line description shown by ``numgru --help``.
    add_arguments : callable
        ``add_arguments(parser)`` adds the command's options.
    run : callable
        ``run(args)`` executes the command and returns an exit code.
    """

    name: str
    help: str
    add_arguments: Callable
    run: Callable


# ------------------------------------------------------------------- demo

def _add_demo_arguments(parser):
    parser.add_argument(
        "--task", choices=("classify", "forecast"), default="classify",
        help="classify: speaker recognition on Japanese Vowels (default); "
             "forecast: one-step-ahead forecasts of the Airline series")
    parser.add_argument(
        "--backend", choices=("auto", "numba", "cython", "numpy"),
        default="auto", help="GRU kernels to use (default: auto)")
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help="number of threads for the GRU kernels (default: all CPUs)")
    parser.add_argument(
        "--seed", type=int, default=0,
        help="random seed of the model (default: 0)")
    parser.add_argument(
        "--max-iter", type=int, default=None, metavar="N",
        help="number of training epochs (default: 100 for classify, "
             "200 for forecast)")
    parser.add_argument(
        "--quiet", action="store_true",
        help="do not print one line per epoch")


def warm_up(model, X, y, X_predict):
    """Fit and run a throwaway copy of ``model`` for one epoch; return seconds.

    The Numba backend compiles its kernels on first use and caches them, so
    the first run on a machine spends its first epoch compiling. Doing it on
    a copy keeps that out of the fit time the demos report.

    Parameters
    ----------
    model : estimator or Pipeline ending in a numgru estimator
        Not modified.
    X, y : training data as ``model.fit`` takes them.
    X_predict : data as ``model.predict`` takes it.

    Returns
    -------
    seconds : float
    """
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning

    start = time.perf_counter()
    throwaway = clone(model)
    estimator = throwaway[-1] if hasattr(throwaway, "steps") else throwaway
    estimator.set_params(max_iter=1, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        throwaway.fit(X, y)
    throwaway.predict(X_predict)
    return time.perf_counter() - start


def _announce_warm_up():
    print("preparing the GRU kernels (the first run on a machine compiles "
          "them, about a minute; later runs load them from the cache)...",
          flush=True)


def _print_warm_up(seconds):
    print(f"kernels ready in {seconds:.2f} s")


def _run_classify_demo(args):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline

    from numgru._backends import resolve_backend
    from numgru._threads import get_num_threads
    from numgru.datasets import load_japanese_vowels
    from numgru.estimators import GRUClassifier
    from numgru.preprocessing import SequenceScaler

    X_train, y_train = load_japanese_vowels("train")
    X_test, y_test = load_japanese_vowels("test")
    max_iter = 100 if args.max_iter is None else args.max_iter
    print(f"Japanese Vowels: {len(X_train)} training and {len(X_test)} test "
          f"utterances, 12 channels, lengths "
          f"{min(len(x) for x in X_train)} to {max(len(x) for x in X_train)}, "
          f"{len(np.unique(y_train))} speakers")
    classifier = GRUClassifier(
        hidden_size=64, max_iter=max_iter, batch_size=32,
        learning_rate_init=1e-3, random_state=args.seed,
        verbose=not args.quiet, backend=args.backend, n_jobs=args.threads)
    model = make_pipeline(SequenceScaler(), classifier)
    _announce_warm_up()
    _print_warm_up(warm_up(model, X_train, y_train, X_test))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X_train, y_train)
    fit_time = time.perf_counter() - start
    accuracy = model.score(X_test, y_test)
    print(f"GRUClassifier(hidden_size=64), {classifier.n_iter_} epochs, "
          f"backend {resolve_backend(args.backend)!r}, "
          f"{get_num_threads() if args.threads is None else args.threads} "
          f"thread(s)")
    print(f"fit time: {fit_time:.2f} s")
    print(f"test accuracy: {accuracy:.4f}")
    return 0


def make_lag_windows(series, n_lags):
    """Cut a 1d series into windows of ``n_lags`` past values and the next value.

    Parameters
    ----------
    series : ndarray of shape (n_values,)
        Series to cut.
    n_lags : int
        Number of past values in each window.

    Returns
    -------
    windows : ndarray of shape (n_values - n_lags, n_lags)
        ``windows[i] = series[i : i + n_lags]``.
    targets : ndarray of shape (n_values - n_lags,)
        ``targets[i] = series[i + n_lags]``.
    """
    series = np.asarray(series, dtype=np.float64)
    windows = np.lib.stride_tricks.sliding_window_view(series, n_lags)[:-1]
    return windows.copy(), series[n_lags:].copy()


def forecast_airline(*, n_lags=12, train_fraction=0.8, hidden_size=16,
                     max_iter=200, random_state=0, backend="auto",
                     n_jobs=None, verbose=False):
    """Forecast the Airline series one month ahead with a GRURegressor.

    The series is log-transformed and seasonally differenced
    (``g[t] = log y[t] - log y[t-12]``, the growth over a year), standardised
    with statistics of the training part, and cut into windows of
    ``n_lags`` past values. The model is fitted on the windows whose target
    lies in the first ``train_fraction`` of the months and forecasts each
    remaining month from the observed values before it. Forecasts are
    turned back into passengers as ``y[t-12] * exp(g_hat[t])``, so the
    seasonal naive forecast (the value twelve months earlier) is the special
    case ``g_hat = 0``.

    Parameters
    ----------
    n_lags : int, default=12
        Past values the model reads for each forecast.
    train_fraction : float, default=0.8
        Share of the months used for training.
    hidden_size : int, default=16
        GRU hidden units.
    max_iter : int, default=200
        Training epochs.
    random_state : int, default=0
        Seed of the model.
    backend : str, default="auto"
        GRU kernels.
    n_jobs : int or None, default=None
        Threads of the GRU kernels.
    verbose : bool, default=False
        Print one line per epoch.

    Returns
    -------
    result : dict
        ``actual``, ``forecast`` and ``naive`` (arrays over the test
        months), ``rmse``, ``mae``, ``naive_rmse``, ``naive_mae``,
        ``compile_time`` (see :func:`warm_up`), ``fit_time``, ``n_train``,
        ``n_test`` and the fitted ``model``.
    """
    from sklearn.exceptions import ConvergenceWarning

    from numgru.datasets import load_airline
    from numgru.estimators import GRURegressor

    passengers = load_airline()
    log_level = np.log(passengers)
    season = 12
    growth = log_level[season:] - log_level[:-season]   # g[t] for t >= 12
    windows, targets = make_lag_windows(growth, n_lags)
    # target of window i is growth[i + n_lags], i.e. month t = i + n_lags + 12
    target_months = np.arange(len(targets)) + n_lags + season
    n_train_months = int(round(train_fraction * len(passengers)))
    is_train = target_months < n_train_months
    train_growth = growth[: n_train_months - season]
    center, scale = train_growth.mean(), train_growth.std()
    X = (windows - center) / scale
    y = (targets - center) / scale

    model = GRURegressor(
        hidden_size=hidden_size, max_iter=max_iter, batch_size=16,
        learning_rate_init=3e-3, alpha=1e-4, random_state=random_state,
        backend=backend, n_jobs=n_jobs, verbose=verbose)
    compile_time = warm_up(model, X[is_train], y[is_train], X[~is_train])
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X[is_train], y[is_train])
    fit_time = time.perf_counter() - start

    test_months = target_months[~is_train]
    growth_hat = model.predict(X[~is_train]) * scale + center
    forecast = passengers[test_months - season] * np.exp(growth_hat)
    naive = passengers[test_months - season]
    actual = passengers[test_months]

    def rmse(a, b):
        return float(np.sqrt(np.mean((a - b) ** 2)))

    def mae(a, b):
        return float(np.mean(np.abs(a - b)))

    return {
        "actual": actual, "forecast": forecast, "naive": naive,
        "rmse": rmse(actual, forecast), "mae": mae(actual, forecast),
        "naive_rmse": rmse(actual, naive), "naive_mae": mae(actual, naive),
        "compile_time": compile_time, "fit_time": fit_time,
        "n_train": int(is_train.sum()),
        "n_test": int((~is_train).sum()), "model": model,
    }


def _run_forecast_demo(args):
    max_iter = 200 if args.max_iter is None else args.max_iter
    print("Airline passengers 1949-1960 (144 months): one-step-ahead "
          "forecasts of the last 20% from the 12 previous values of the "
          "yearly log growth")
    _announce_warm_up()
    result = forecast_airline(
        max_iter=max_iter, random_state=args.seed, backend=args.backend,
        n_jobs=args.threads, verbose=not args.quiet)
    _print_warm_up(result["compile_time"])
    print(f"trained on {result['n_train']} windows, forecast "
          f"{result['n_test']} months; fit time: {result['fit_time']:.2f} s")
    print(f"{'':24s}{'RMSE':>10s}{'MAE':>10s}")
    print(f"{'GRURegressor':24s}{result['rmse']:10.2f}{result['mae']:10.2f}")
    print(f"{'seasonal naive (t-12)':24s}{result['naive_rmse']:10.2f}"
          f"{result['naive_mae']:10.2f}")
    better = result["rmse"] < result["naive_rmse"]
    print("the GRU beats the seasonal naive forecast" if better else
          "the GRU does not beat the seasonal naive forecast")
    return 0


def _run_demo(args):
    if args.threads is not None and args.threads < 1:
        print("numgru demo: --threads must be at least 1", file=sys.stderr)
        return 2
    if args.max_iter is not None and args.max_iter < 1:
        print("numgru demo: --max-iter must be at least 1", file=sys.stderr)
        return 2
    if args.task == "forecast":
        return _run_forecast_demo(args)
    return _run_classify_demo(args)


COMMANDS = [
    Command(
        name="demo",
        help="train a model on a bundled data set and report how it does",
        add_arguments=_add_demo_arguments,
        run=_run_demo,
    ),
]


def build_parser():
    """Build the argument parser with one sub-parser per command.

    Returns
    -------
    parser : argparse.ArgumentParser
    """
    from numgru import __version__

    parser = argparse.ArgumentParser(
        prog="numgru",
        description="Fast CPU gated recurrent units with scikit-learn "
                    "estimators.")
    parser.add_argument("--version", action="version",
                        version=f"numgru {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="command")
    for command in COMMANDS:
        subparser = subparsers.add_parser(
            command.name, help=command.help, description=command.help)
        command.add_arguments(subparser)
        subparser.set_defaults(run=command.run)
    return parser


def main(argv=None):
    """Run the ``numgru`` program.

    Parameters
    ----------
    argv : list of str or None, default=None
        Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    exit_code : int
        0 on success.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except BrokenPipeError:
        # the reader went away (``numgru demo | head``): stop quietly, and
        # keep Python from reporting the same error again at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
