"""The benchmark suite runs: every asv benchmark once, and the comparison tool.

Each asv benchmark class is set up and called once at the smallest anchor
shape with the numpy backend, so a change of API breaks a test rather than
silently emptying the suite.
"""

import importlib
import inspect
import os
import sys

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numgru  # noqa: E402

BENCHMARK_MODULES = ["benchmarks.bench_gru", "benchmarks.bench_estimators"]
SMALLEST_SHAPE = "small"
BENCHMARK_PREFIXES = ("time_", "peakmem_", "mem_", "track_")


def benchmark_classes():
    """(module name, class) of every asv benchmark class in the suite."""
    found = []
    for module_name in BENCHMARK_MODULES:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if (inspect.isclass(value) and value.__module__ == module.__name__
                    and any(attr.startswith(BENCHMARK_PREFIXES) for attr in dir(value))):
                found.append(pytest.param(value, id=f"{module_name}.{name}"))
    return found


def smallest_params(benchmark_class):
    """One parameter combination: numpy backend, smallest shape, first of the rest."""
    choices = {"backend": "numpy", "shape": SMALLEST_SHAPE}
    params = benchmark_class.params
    if params and not isinstance(params[0], (list, tuple)):
        params = (params,)
    chosen = []
    for name, values in zip(benchmark_class.param_names, params):
        value = choices.get(name, values[0])
        assert value in values, f"{benchmark_class.__name__}: {name}={value!r} not a parameter"
        chosen.append(value)
    return chosen


def test_suite_has_benchmarks():
    names = [param.id for param in benchmark_classes()]
    for expected in ("Forward", "ForwardOne", "TrainStep", "StepBatch",
                     "StreamStep", "EstimatorBenchmark"):
        assert any(name.endswith("." + expected) for name in names), names


@pytest.mark.parametrize("benchmark_class", benchmark_classes())
def test_benchmark_runs_once(benchmark_class, monkeypatch):
    from benchmarks import bench_estimators

    monkeypatch.setattr(bench_estimators, "N_BATCHES", 1)
    monkeypatch.setattr(bench_estimators, "MAX_ITER", 1)
    args = smallest_params(benchmark_class)
    benchmark = benchmark_class()
    try:
        benchmark.setup(*args)
    except NotImplementedError as exc:
        pytest.skip(f"setup skips {args}: {exc}")
    methods = [name for name in dir(benchmark) if name.startswith(BENCHMARK_PREFIXES)]
    assert methods
    for name in methods:
        getattr(benchmark, name)(*args)
    teardown = getattr(benchmark, "teardown", None)
    if teardown is not None:
        teardown(*args)


def test_unavailable_backend_is_skipped():
    from benchmarks import skip_unless_runnable

    with pytest.raises(NotImplementedError):
        skip_unless_runnable("numpy", "large")
    for backend in ("numba", "cython"):
        if backend not in numgru.available_backends():
            with pytest.raises(NotImplementedError):
                skip_unless_runnable(backend, SMALLEST_SHAPE)


def test_compare_flops_and_timer():
    from benchmarks import compare

    assert compare.forward_flops((32, 20, 50, 128)) == 2 * 32 * 20 * 178 * 384
    counts = {"a": 0, "b": 0}

    def make(name):
        def call():
            counts[name] += 1
        return call

    timed = compare.interleaved_timings({"a": make("a"), "b": make("b")},
                                     repeats=3, min_time=1e-3)
    assert set(timed) == {"a", "b"}
    for entry in timed.values():
        assert entry["min"] <= entry["median"] <= entry["max"]
        assert entry["loops"] >= 1
    assert counts["a"] > 3 and counts["b"] > 3


def test_onnx_gru_matches_numgru():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from benchmarks import compare

    shape = (3, 4, 5, 6)
    gru = numgru.GRU(5, 6, backend="numpy", random_state=0)
    x = np.random.default_rng(0).standard_normal(shape[:3]).astype(np.float32)
    expected, expected_h = gru.forward(x)
    session, names = compare.make_onnx_gru_session(gru.state_dict(), shape)
    y, y_h = session.run(names, {"X": np.ascontiguousarray(x.transpose(1, 0, 2))})
    np.testing.assert_allclose(y[:, 0].transpose(1, 0, 2), expected, atol=1e-5)
    np.testing.assert_allclose(y_h, expected_h, atol=1e-5)

    session, names = compare.make_onnx_gru_session(
        gru.state_dict(), (3, 1, 5, 6), with_initial_state=True)
    h0 = np.random.default_rng(1).standard_normal((1, 3, 6)).astype(np.float32)
    (h_1,) = session.run(names, {"X": np.ascontiguousarray(x[:, :1].transpose(1, 0, 2)),
                                 "initial_h": h0})
    _, expected_h1 = gru.forward(x[:, :1], h0=h0)
    np.testing.assert_allclose(h_1, expected_h1, atol=1e-5)


def test_compare_main_quick(tmp_path, capsys, monkeypatch):
    from benchmarks import compare

    monkeypatch.setattr(compare, "measure_sgemm_rate", lambda **options: 100.0)
    report = tmp_path / "report.md"
    code = compare.main(["--backends", "numpy", "--shapes", "small", "--repeats", "1",
                         "--min-time", "0.001", "--anchors", "none", "--skip-memory",
                         "--skip-startup", "--markdown", str(report)])
    assert code == 0
    text = report.read_text()
    assert "| small (32, 50, 8, 32) | numpy |" in text
    assert "numgru:" in text and "cpu:" in text
    assert "GFLOP/s" in capsys.readouterr().out


def test_compare_rejects_unknown_shape(capsys):
    from benchmarks import compare

    assert compare.main(["--shapes", "huge", "--anchors", "none"]) == 2
    assert "unknown shape" in capsys.readouterr().err


def test_memory_and_startup_subprocesses():
    from benchmarks import compare

    memory = compare.measure_train_memory("numgru", "numpy", (4, 5, 3, 8))
    assert memory["rss_peak_increase"] >= 0
    assert memory["tracemalloc_peak"] > 0
    assert memory["rss_kept_after_first_step"] >= 0
    startup = compare.measure_startup("numpy")
    for phase in ("cold", "warm"):
        assert startup[phase]["import"] > 0 and startup[phase]["first_call"] > 0


def test_subprocess_environment_sets_and_removes(monkeypatch):
    from benchmarks import compare

    monkeypatch.setenv("NUMGRU_TEST_REMOVED", "1")
    monkeypatch.setenv("NUMGRU_TEST_KEPT", "2")
    script = ("import json, os; print(json.dumps({name: os.environ.get(name) "
              "for name in ('NUMGRU_TEST_REMOVED', 'NUMGRU_TEST_KEPT', "
              "'NUMGRU_TEST_SET')}))")
    seen = compare._run_json_subprocess(
        script, [], {"NUMGRU_TEST_REMOVED": None, "NUMGRU_TEST_SET": "3"})
    assert seen == {"NUMGRU_TEST_REMOVED": None, "NUMGRU_TEST_KEPT": "2",
                    "NUMGRU_TEST_SET": "3"}


def test_compare_defines_no_asv_benchmark():
    from benchmarks import compare

    asv_prefixes = BENCHMARK_PREFIXES + ("Time", "Mem", "Peakmem", "Track")
    offenders = [name for name in vars(compare) if name.startswith(asv_prefixes)]
    assert not offenders, f"asv would collect {offenders} from compare.py"
