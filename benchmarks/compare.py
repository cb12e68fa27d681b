"""Time numgru next to PyTorch and ONNX Runtime on the anchor shapes.

Run as a script (``python benchmarks/compare.py --help``) or call
:func:`main` with a list of arguments. The module has no dependency on the
rest of ``benchmarks/`` so it can be shipped inside a package as is.

Method
------
- Every contestant runs float32 on 2 threads (``--threads`` changes it):
  ``numgru.set_num_threads(2)``, ``torch.set_num_threads(2)``, ONNX Runtime with ``intra_op_num_threads=2``,
  ``inter_op_num_threads=1`` and sequential execution; BLAS called from
  numpy is limited to 2 threads with threadpoolctl.
- Timings are interleaved: each repeat runs every contestant of a shape once,
  in an order rotated from one repeat to the next, so slow drifts of a noisy
  machine hit everyone alike. A timing runs enough calls back to back to last
  at least ``--min-time`` seconds; the reported time per call is the median
  over repeats.
- "fwd" is inference over a batch (PyTorch under ``torch.inference_mode``);
  "train" is forward plus backward of ``sum(output * G)`` for a fixed random
  ``G``, with gradients of every parameter and of the input. ONNX Runtime has
  no training here.
- Before timing, each contestant's forward output is checked against
  numgru's on the same weights.
- Flop counts: a forward costs ``2*B*T*(I+H)*3H`` flops, forward plus
  backward about three times that. numgru's rate is also given as a
  percentage of a large float32 BLAS matrix product measured in the same
  run, the practical ceiling of the machine.
- Memory is measured in fresh subprocesses, both as the growth of the peak
  resident set size over a train step (``VmHWM`` reset through
  ``/proc/self/clear_refs``; this sees every allocation, including those
  made inside compiled Numba code) and as tracemalloc's peak (sees numpy's
  allocations from Python and C, but not arrays allocated inside ``njit``
  code, which go through Numba's own allocator).
- Start-up: a fresh subprocess with ``NUMBA_CACHE_DIR`` pointing to a new
  empty directory times ``import numgru`` and a first forward plus backward
  (cold: everything is compiled); a second subprocess with the same directory
  times ``import numgru`` and a first forward (warm: compiled code is loaded
  from the cache, and numgru's Python modules from their bytecode, which
  the first process wrote even where ``PYTHONDONTWRITEBYTECODE`` is set).
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

__all__ = [
    "SHAPES",
    "STREAM_STEP",
    "main",
    "build_parser",
    "forward_flops",
    "machine_description",
    "measure_sgemm_rate",
    "interleaved_timings",
    "make_onnx_gru_session",
]

#: Anchor shapes, name to (B, T, I, H), in report order.
SHAPES = {
    "textbook-torch": (32, 20, 50, 128),
    "textbook-keras": (32, 100, 1, 64),
    "small": (32, 50, 8, 32),
    "medium": (64, 100, 32, 128),
    "large": (128, 100, 128, 512),
}
#: Name of the streaming shape: one step of one sample.
STREAM_STEP = "stream-step"
STREAM_STEP_SHAPE = (1, 1, 32, 128)
ALL_SHAPES = {**SHAPES, STREAM_STEP: STREAM_STEP_SHAPE}

N_THREADS = 2
TRAIN_FLOP_FACTOR = 3
SUBPROCESS_TIMEOUT = 900


# ---------------------------------------------------------------- utilities

def forward_flops(shape):
    """Flops of a one-layer GRU forward pass, ``2*B*T*(I+H)*3H``.

    Parameters
    ----------
    shape : tuple of int
        (B, T, I, H).

    Returns
    -------
    flops : int
    """
    n_samples, n_steps, n_inputs, n_hidden = shape
    return 2 * n_samples * n_steps * (n_inputs + n_hidden) * 3 * n_hidden


def format_seconds(seconds):
    """Format a duration with a unit suited to its size (us, ms or s)."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def format_bytes(n_bytes):
    """Format a byte count in MiB."""
    if n_bytes is None:
        return "-"
    return f"{n_bytes / 2**20:.1f} MiB"


def _import_optional(name):
    try:
        return __import__(name)
    except ImportError:
        return None


def _version(name):
    """Installed version of a distribution, without importing it when possible."""
    import importlib.metadata

    if name in sys.modules:
        return getattr(sys.modules[name], "__version__", "unknown")
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        module = _import_optional(name)
        return getattr(module, "__version__", "unknown") if module else "not installed"


def machine_description():
    """Date, CPU, core count and library versions of this run.

    Returns
    -------
    info : dict of str to str
    """
    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model,
        "cores": f"{os.cpu_count()} logical CPUs ({usable} usable)",
        "load average at start (1, 5, 15 min)": _load_average(),
        "python": platform.python_version(),
        "numgru": _version("numgru"),
        "numpy": np.__version__,
        "numba": _version("numba"),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
    }


def _load_average():
    try:
        return ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _threads_text(n_threads):
    return f"{n_threads} thread" + ("" if n_threads == 1 else "s")


def _blas_limits(n_threads):
    """Context manager limiting BLAS threads (no-op without threadpoolctl)."""
    threadpoolctl = _import_optional("threadpoolctl")
    if threadpoolctl is None:
        import contextlib
        return contextlib.nullcontext()
    return threadpoolctl.threadpool_limits(limits=n_threads, user_api="blas")


def measure_sgemm_rate(size=2048, n_threads=N_THREADS, repeats=7):
    """Float32 matrix product rate of numpy's BLAS, in GFLOP/s.

    Parameters
    ----------
    size : int, default=2048
        Side of the square matrices.
    n_threads : int, default=2
        BLAS threads, set with threadpoolctl.
    repeats : int, default=7
        The best of this many products is kept (the rate the machine can
        reach, not an average under noise).

    Returns
    -------
    gflops : float
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    c = np.empty((size, size), dtype=np.float32)
    with _blas_limits(n_threads):
        np.matmul(a, b, out=c)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def interleaved_timings(calls, repeats, min_time):
    """Median time per call of several callables, timed round-robin.

    Parameters
    ----------
    calls : dict of str to callable
        Contestants; each callable takes no argument.
    repeats : int
        Number of rounds; each round times every contestant once.
    min_time : float
        Each timing runs a contestant enough times in a row to last at least
        this many seconds (calibrated once, before the rounds).

    Returns
    -------
    times : dict of str to dict
        Per contestant: ``median``, ``min``, ``max`` seconds per call and
        ``loops``, the calls per timing.
    """
    names = list(calls)
    loops = {}
    for name in names:
        function = calls[name]
        function()
        n_loops = 1
        while True:
            start = time.perf_counter()
            for _ in range(n_loops):
                function()
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
            n_loops = max(n_loops * 2,
                          int(np.ceil(n_loops * 1.2 * min_time / max(elapsed, 1e-9))))
        loops[name] = n_loops
    samples = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            function, n_loops = calls[name], loops[name]
            start = time.perf_counter()
            for _ in range(n_loops):
                function()
            samples[name].append((time.perf_counter() - start) / n_loops)
    return {name: {"median": statistics.median(values), "min": min(values),
                   "max": max(values), "loops": loops[name]}
            for name, values in samples.items()}


# -------------------------------------------------------------- contestants

def _reorder_rzn_to_zrn(array, n_hidden):
    """PyTorch's gate blocks (r, z, n) to ONNX's (z, r, h), along axis 0."""
    r, z, n = (array[k * n_hidden:(k + 1) * n_hidden] for k in range(3))
    return np.concatenate([z, r, n], axis=0)


def make_onnx_gru_session(params, shape, with_initial_state=False,
                          n_threads=N_THREADS):
    """An ONNX Runtime session running one ``GRU`` node with numgru's weights.

    Parameters
    ----------
    params : dict of str to ndarray
        A one-layer unidirectional numgru/PyTorch state dict, float32.
    shape : tuple of int
        (B, T, I, H); the model's input ``X`` has shape (T, B, I) (ONNX
        Runtime's CPU GRU is time-major).
    with_initial_state : bool, default=False
        Add an ``initial_h`` input of shape (1, B, H) and return only ``Y_h``
        (for streaming steps); otherwise return ``Y`` and ``Y_h`` starting
        from zeros.
    n_threads : int, default=2
        ``intra_op_num_threads`` of the session.

    Returns
    -------
    session : onnxruntime.InferenceSession
    output_names : list of str
    """
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    n_samples, n_steps, n_inputs, n_hidden = shape
    weights = {
        "W": _reorder_rzn_to_zrn(params["weight_ih_l0"], n_hidden)[None],
        "R": _reorder_rzn_to_zrn(params["weight_hh_l0"], n_hidden)[None],
        "B": np.concatenate([_reorder_rzn_to_zrn(params["bias_ih_l0"], n_hidden),
                             _reorder_rzn_to_zrn(params["bias_hh_l0"], n_hidden)])[None],
    }
    initializers = [numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name)
                    for name, value in weights.items()]
    inputs = [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, [n_steps, n_samples, n_inputs])]
    node_inputs = ["X", "W", "R", "B"]
    if with_initial_state:
        inputs.append(helper.make_tensor_value_info(
            "initial_h", TensorProto.FLOAT, [1, n_samples, n_hidden]))
        node_inputs += ["", "initial_h"]
        node_outputs = ["", "Y_h"]
    else:
        node_outputs = ["Y", "Y_h"]
    outputs = []
    if "Y" in node_outputs:
        outputs.append(helper.make_tensor_value_info(
            "Y", TensorProto.FLOAT, [n_steps, 1, n_samples, n_hidden]))
    outputs.append(helper.make_tensor_value_info(
        "Y_h", TensorProto.FLOAT, [1, n_samples, n_hidden]))
    node = helper.make_node("GRU", node_inputs, node_outputs, hidden_size=n_hidden,
                            linear_before_reset=1)
    graph = helper.make_graph([node], "gru", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = n_threads
    options.inter_op_num_threads = 1
    # Idle intra-op threads block instead of spinning: alone, ONNX Runtime is
    # as fast either way; interleaved with other engines, its spinning threads
    # took the cores from whichever engine ran next, and from itself.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, [name for name in node_outputs if name]


class Contestants:
    """Builds the timed callables of every engine for one shape.

    Parameters
    ----------
    shape_name : str
        A key of :data:`ALL_SHAPES`.
    backends : list of str
        numgru backends to time.
    engines : set of str
        Anchors to time: a subset of {"torch", "ort"}, restricted to those
        installed.
    n_threads : int, default=2
        Threads given to every engine.
    """

    def __init__(self, shape_name, backends, engines, n_threads=N_THREADS):
        import numgru

        self.n_threads = n_threads
        self.shape_name = shape_name
        self.shape = ALL_SHAPES[shape_name]
        self.is_stream = shape_name == STREAM_STEP
        n_samples, n_steps, n_inputs, n_hidden = self.shape
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((n_samples, n_steps, n_inputs)).astype(np.float32)
        self.d_output = rng.standard_normal(
            (n_samples, n_steps, n_hidden)).astype(np.float32)
        self.models = {backend: numgru.GRU(n_inputs, n_hidden, dtype="float32",
                                           backend=backend, random_state=0)
                       for backend in backends}
        self.params = numgru.GRU(n_inputs, n_hidden, dtype="float32",
                                 backend="numpy", random_state=0).state_dict()
        self.reference_output = self._reference_output()
        self.engines = engines
        self.problems = []

    def _reference_output(self):
        import numgru
        model = numgru.GRU(self.shape[2], self.shape[3], dtype="float32",
                           backend="numpy", random_state=0)
        if self.is_stream:
            return None
        return model.forward(self.x)[0]

    def _check(self, label, output):
        if self.reference_output is None:
            return
        error = float(np.max(np.abs(np.asarray(output) - self.reference_output)))
        if not error <= 1e-3:
            self.problems.append(
                f"{label} at {self.shape_name}: forward output differs from "
                f"numgru's numpy reference by {error:.2e}")

    def numgru_calls(self, backend):
        """``{"fwd": f, "train": g}`` (or ``{"fwd": step}`` for the stream shape)."""
        model = self.models[backend]
        if self.is_stream:
            x_t = np.ascontiguousarray(self.x[:, 0])
            h = np.zeros((1, 1, self.shape[3]), dtype=np.float32)
            model.step(x_t, h)
            return {"fwd": lambda: model.step(x_t, h)}
        x, d_output = self.x, self.d_output
        self._check(f"numgru[{backend}]", model.forward(x)[0])

        def train_step():
            _, _, cache = model.forward(x, return_cache=True)
            return model.backward(cache, d_output)

        return {"fwd": lambda: model.forward(x), "train": train_step}

    def torch_calls(self):
        """Timed callables of PyTorch ``nn.GRU`` (``nn.GRUCell`` for the stream shape)."""
        import torch

        torch.set_num_threads(self.n_threads)
        n_samples, n_steps, n_inputs, n_hidden = self.shape
        if self.is_stream:
            cell = torch.nn.GRUCell(n_inputs, n_hidden)
            with torch.no_grad():
                cell.weight_ih.copy_(torch.from_numpy(self.params["weight_ih_l0"]))
                cell.weight_hh.copy_(torch.from_numpy(self.params["weight_hh_l0"]))
                cell.bias_ih.copy_(torch.from_numpy(self.params["bias_ih_l0"]))
                cell.bias_hh.copy_(torch.from_numpy(self.params["bias_hh_l0"]))
            x_t = torch.from_numpy(np.ascontiguousarray(self.x[:, 0]))
            h = torch.zeros(1, n_hidden)

            def cell_step():
                with torch.inference_mode():
                    return cell(x_t, h)

            return {"fwd": cell_step}
        module = torch.nn.GRU(n_inputs, n_hidden, batch_first=True)
        module.load_state_dict({name: torch.from_numpy(value)
                                for name, value in self.params.items()})
        x = torch.from_numpy(self.x)
        x_train = x.clone().requires_grad_(True)
        d_output = torch.from_numpy(self.d_output)
        wrt = list(module.parameters()) + [x_train]

        def forward():
            with torch.inference_mode():
                return module(x)

        def train_step():
            output, _ = module(x_train)
            return torch.autograd.grad((output * d_output).sum(), wrt)

        self._check("torch", forward()[0].numpy())
        return {"fwd": forward, "train": train_step}

    def ort_calls(self):
        """Timed callable of ONNX Runtime's GRU operator (forward only)."""
        n_samples, n_steps, n_inputs, n_hidden = self.shape
        session, output_names = make_onnx_gru_session(
            self.params, self.shape, with_initial_state=self.is_stream,
            n_threads=self.n_threads)
        x_time_major = np.ascontiguousarray(self.x.transpose(1, 0, 2))
        feeds = {"X": x_time_major}
        if self.is_stream:
            feeds["initial_h"] = np.zeros((1, 1, n_hidden), dtype=np.float32)
        else:
            y = session.run(output_names, feeds)[0]
            self._check("onnxruntime", y[:, 0].transpose(1, 0, 2))
        return {"fwd": lambda: session.run(output_names, feeds)}

    def all_calls(self):
        """Every timed callable, keyed ``(engine, kind)``; e.g. ``("numgru[numba]", "fwd")``."""
        builders = [(f"numgru[{backend}]", lambda backend=backend: self.numgru_calls(backend))
                    for backend in self.models]
        if "torch" in self.engines:
            builders.append(("torch", self.torch_calls))
        if "ort" in self.engines:
            builders.append(("ort", self.ort_calls))
        calls = {}
        for engine, build in builders:
            try:
                built = build()
            except Exception as exc:  # one engine failing must not stop the others
                self.problems.append(
                    f"{engine} at {self.shape_name}: could not run: {exc!r}")
                continue
            for kind, function in built.items():
                calls[(engine, kind)] = function
        return calls


# ------------------------------------------------------------- subprocesses

_MEMORY_SCRIPT = r"""
import gc, json, sys, tracemalloc
import numpy as np
engine, backend, B, T, I, H = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

def make_step(n_samples, n_steps):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n_samples, n_steps, I)).astype(np.float32)
    g = rng.standard_normal((n_samples, n_steps, H)).astype(np.float32)
    if engine == "numgru":
        import numgru
        numgru.set_num_threads(2)
        model = numgru.GRU(I, H, dtype="float32", backend=backend, random_state=0)
        def step():
            _, _, cache = model.forward(x, return_cache=True)
            return model.backward(cache, g)
    else:
        import torch
        torch.set_num_threads(2)
        module = torch.nn.GRU(I, H, batch_first=True)
        xt = torch.from_numpy(x).requires_grad_(True)
        gt = torch.from_numpy(g)
        wrt = list(module.parameters()) + [xt]
        def step():
            out, _ = module(xt)
            return torch.autograd.grad((out * gt).sum(), wrt)
    return step

make_step(2, 3)()
step = make_step(B, T)
gc.collect()
# a first step of the measured shape loads or compiles its code, starts the
# thread pools and sizes the work arrays an engine keeps between calls
before_first = status("VmRSS")
step()
gc.collect()
kept = status("VmRSS") - before_first
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
baseline = status("VmRSS")
result = step()
peak = status("VmHWM")
del result
gc.collect()
tracemalloc.start()
result = step()
traced_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps({"rss_peak_increase": peak - baseline, "tracemalloc_peak": traced_peak,
                  "rss_kept_after_first_step": kept}))
"""

_STARTUP_SCRIPT = r"""
import json, sys, time
start = time.perf_counter()
import numgru
imported = time.perf_counter()
import numpy as np
backend, with_backward = sys.argv[1], sys.argv[2] == "1"
numgru.set_num_threads(2)
rng = np.random.default_rng(0)
x = rng.standard_normal((32, 50, 8)).astype(np.float32)
model = numgru.GRU(8, 32, dtype="float32", backend=backend, random_state=0)
if with_backward:
    out, _, cache = model.forward(x, return_cache=True)
    model.backward(cache, np.ones_like(out))
else:
    model.forward(x)
done = time.perf_counter()
print(json.dumps({"import": imported - start, "first_call": done - imported}))
"""


def _run_json_subprocess(script, args, extra_env=None):
    # extra_env: variables to set, or to remove where the value is None
    env = dict(os.environ)
    for name, value in (extra_env or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    spec = importlib.util.find_spec("numgru")
    if spec is not None and spec.origin:
        package_parent = os.path.dirname(os.path.dirname(spec.origin))
        env["PYTHONPATH"] = os.pathsep.join(
            [package_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    completed = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], env=env,
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr.strip().splitlines()[-1]
                           if completed.stderr.strip() else "subprocess failed")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def train_step_memory_model(shape):
    """Bytes a one-layer float32 train step must hold, by category.

    Parameters
    ----------
    shape : tuple of int
        (B, T, I, H).

    Returns
    -------
    sizes : dict of str to int
        ``params``: weights and biases; ``activations``: what numgru keeps
        for backward (outputs and four gate values per step, plus the final
        state); ``gradients``: gradients of the parameters, the input and the
        initial state.
    """
    n_samples, n_steps, n_inputs, n_hidden = shape
    item = 4
    params = (3 * n_hidden * (n_inputs + n_hidden) + 6 * n_hidden) * item
    activations = (n_samples * n_steps * 5 * n_hidden + n_samples * n_hidden) * item
    gradients = params + (n_samples * n_steps * n_inputs + n_samples * n_hidden) * item
    return {"params": params, "activations": activations, "gradients": gradients}


def measure_train_memory(engine, backend, shape):
    """Peak memory growth of one train step, in a fresh subprocess.

    Parameters
    ----------
    engine : {"numgru", "torch"}
    backend : str
        numgru backend (ignored for torch).
    shape : tuple of int

    Returns
    -------
    result : dict
        ``rss_peak_increase`` (bytes; growth of the peak resident set size
        during a second step, the model and inputs already allocated),
        ``tracemalloc_peak`` (bytes seen by tracemalloc during a third step)
        and ``rss_kept_after_first_step`` (bytes the first step left resident:
        code, thread pools, work arrays kept between calls).
    """
    # A fixed mmap threshold makes glibc return large freed blocks to the
    # system, so the resident set size follows what is actually live.
    return _run_json_subprocess(
        _MEMORY_SCRIPT, [engine, backend, *shape],
        {"MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": str(N_THREADS)})


def measure_startup(backend):
    """Cold and warm start-up times of numgru in fresh subprocesses.

    Both processes may write Python's bytecode cache, whatever
    ``PYTHONDONTWRITEBYTECODE`` says here: the warm process then reads
    numgru's modules compiled, as after a ``pip install``, which compiles
    them at install time. (Compiling them from source at every start made
    the warm start about 0.2 s slower on the development machine.)

    Returns
    -------
    result : dict
        ``cold``: import and first forward+backward with an empty Numba
        cache; ``warm``: import and first forward with that cache filled.
        Each maps ``import`` and ``first_call`` to seconds.
    """
    with tempfile.TemporaryDirectory(prefix="numgru-cache-") as cache_dir:
        env = {"NUMBA_CACHE_DIR": cache_dir, "PYTHONDONTWRITEBYTECODE": None}
        cold = _run_json_subprocess(_STARTUP_SCRIPT, [backend, 1], env)
        warm = _run_json_subprocess(_STARTUP_SCRIPT, [backend, 0], env)
    return {"cold": cold, "warm": warm}


# ------------------------------------------------------------------ report

def _ratio(numerator, denominator):
    if numerator is None or denominator is None:
        return "-"
    return f"{numerator / denominator:.2f}"


def speed_tables(results, backends, sgemm_gflops, statistic="median",
                 n_threads=N_THREADS):
    """Markdown tables of times, ratios and numgru's flop rates.

    Parameters
    ----------
    results : dict
        ``results[shape_name][(engine, kind)]`` is :func:`interleaved_timings`'s
        entry.
    backends : list of str
    sgemm_gflops : float or None
        When None, the flop-rate table is left out.
    statistic : {"median", "min"}, default="median"
        Which time per call of the repeats to report.
    n_threads : int, default=2
        Threads of the matrix product behind ``sgemm_gflops``.

    Returns
    -------
    text : str
    """
    def median(shape_name, engine, kind):
        entry = results[shape_name].get((engine, kind))
        return entry[statistic] if entry else None

    lines = [
        "| shape (B, T, I, H) | backend | numgru fwd | torch fwd | ORT fwd "
        "| fwd ratio vs best anchor | numgru train | torch train | train ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for shape_name in results:
        shape_text = ", ".join(map(str, ALL_SHAPES[shape_name]))
        torch_fwd = median(shape_name, "torch", "fwd")
        ort_fwd = median(shape_name, "ort", "fwd")
        torch_train = median(shape_name, "torch", "train")
        anchors = [t for t in (torch_fwd, ort_fwd) if t is not None]
        best_anchor = min(anchors) if anchors else None
        for backend in backends:
            fwd = median(shape_name, f"numgru[{backend}]", "fwd")
            train = median(shape_name, f"numgru[{backend}]", "train")
            lines.append(
                f"| {shape_name} ({shape_text}) | {backend} | {format_seconds(fwd)} "
                f"| {format_seconds(torch_fwd)} | {format_seconds(ort_fwd)} "
                f"| {_ratio(fwd, best_anchor)} | {format_seconds(train)} "
                f"| {format_seconds(torch_train)} | {_ratio(train, torch_train)} |")
    if sgemm_gflops is None:
        return "\n".join(lines)
    lines += [
        "",
        f"Measured float32 BLAS matrix product (2048 x 2048, {_threads_text(n_threads)}): "
        f"{sgemm_gflops:.0f} GFLOP/s.",
        "",
        "| shape | backend | fwd GFLOP/s | fwd % of sgemm | train GFLOP/s "
        "| train % of sgemm |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for shape_name in results:
        flops = forward_flops(ALL_SHAPES[shape_name])
        for backend in backends:
            cells = []
            for kind, factor in (("fwd", 1), ("train", TRAIN_FLOP_FACTOR)):
                seconds = median(shape_name, f"numgru[{backend}]", kind)
                if seconds is None:
                    cells += ["-", "-"]
                else:
                    rate = factor * flops / seconds / 1e9
                    cells += [f"{rate:.1f}", f"{100 * rate / sgemm_gflops:.0f}%"]
            lines.append(f"| {shape_name} | {backend} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(memory_results):
    """Markdown table of train-step memory against the arrays it must hold."""
    lines = [
        "| shape | engine | params | activations kept | gradients (params, x, h0) "
        "| peak RSS growth | tracemalloc peak | RSS growth / (activations + gradients) "
        "| RSS kept after a first step |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (shape_name, engine), measured in memory_results.items():
        model = train_step_memory_model(ALL_SHAPES[shape_name])
        if isinstance(measured, str):
            lines.append(f"| {shape_name} | {engine} | - | - | - | failed: {measured} | - | - | - |")
            continue
        needed = model["activations"] + model["gradients"]
        lines.append(
            f"| {shape_name} | {engine} | {format_bytes(model['params'])} "
            f"| {format_bytes(model['activations'])} | {format_bytes(model['gradients'])} "
            f"| {format_bytes(measured['rss_peak_increase'])} "
            f"| {format_bytes(measured['tracemalloc_peak'])} "
            f"| {measured['rss_peak_increase'] / needed:.2f} "
            f"| {format_bytes(measured['rss_kept_after_first_step'])} |")
    return "\n".join(lines)


def startup_table(startup_results):
    """Markdown table of cold and warm start-up times."""
    lines = [
        "| backend | import (cold cache) | first forward+backward (cold cache) "
        "| import (warm cache) | first forward (warm cache) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for backend, measured in startup_results.items():
        if isinstance(measured, str):
            lines.append(f"| {backend} | failed: {measured} | - | - | - |")
            continue
        cold, warm = measured["cold"], measured["warm"]
        lines.append(
            f"| {backend} | {format_seconds(cold['import'])} "
            f"| {format_seconds(cold['first_call'])} | {format_seconds(warm['import'])} "
            f"| {format_seconds(warm['first_call'])} |")
    return "\n".join(lines)


# -------------------------------------------------------------------- main

def build_parser():
    """The command-line parser of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/compare.py",
        description="Time numgru next to PyTorch nn.GRU and ONNX Runtime's GRU "
                    "operator (float32, 2 threads each) and print markdown tables.")
    parser.add_argument(
        "--shapes", default=None,
        help=f"comma-separated shape names among {', '.join(ALL_SHAPES)} "
             "(default: all)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timing rounds; the median is reported (default 11, 5 with --quick)")
    parser.add_argument("--min-time", type=float, default=None,
                        help="minimum seconds per timing (default 0.02, 0.01 with --quick)")
    parser.add_argument(
        "--backends", default=None,
        help="comma-separated numgru backends (default: every available compiled "
             "backend, or numpy when none is)")
    parser.add_argument("--threads", type=int, default=N_THREADS,
                        help=f"threads for every engine (default {N_THREADS})")
    parser.add_argument("--anchors", default="torch,ort",
                        help="comma-separated anchors among torch, ort, or 'none'")
    parser.add_argument("--quick", action="store_true",
                        help="fewer, shorter repeats; skips the large shape unless "
                             "--shapes names it")
    parser.add_argument("--skip-memory", action="store_true",
                        help="do not measure train-step memory")
    parser.add_argument("--skip-startup", action="store_true",
                        help="do not measure cold and warm start-up")
    parser.add_argument("--markdown", metavar="FILE", default=None,
                        help="also write the report to FILE")
    return parser


def _split(text):
    return [item.strip() for item in text.split(",") if item.strip()]


def main(argv=None):
    """Run the comparison and print its report.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    exit_code : int
        0 on success, 1 when a contestant's output disagreed with numgru's
        reference or a measurement failed.
    """
    args = build_parser().parse_args(argv)
    # The anchors' runtimes load before numgru: importing numgru makes idle
    # OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) unless the user chose a
    # policy, and PyTorch's own OpenMP runtime, started after that, would run
    # slower than its users see it.
    for runtime in ("torch", "onnxruntime"):
        if importlib.util.find_spec(runtime) is not None:
            importlib.import_module(runtime)
    import numgru

    available = numgru.available_backends()
    if args.backends:
        backends = _split(args.backends)
        missing = [name for name in backends if name not in available]
        if missing:
            print(f"error: backend(s) {', '.join(missing)} not available here "
                  f"(available: {', '.join(available)})", file=sys.stderr)
            return 2
    else:
        backends = [name for name in available if name != "numpy"] or ["numpy"]
    if args.shapes:
        shape_names = _split(args.shapes)
        unknown = [name for name in shape_names if name not in ALL_SHAPES]
        if unknown:
            print(f"error: unknown shape(s) {', '.join(unknown)}; "
                  f"choose among {', '.join(ALL_SHAPES)}", file=sys.stderr)
            return 2
    else:
        shape_names = [name for name in ALL_SHAPES if not (args.quick and name == "large")]
    repeats = args.repeats or (5 if args.quick else 11)
    min_time = args.min_time or (0.01 if args.quick else 0.02)
    requested_anchors = set() if args.anchors == "none" else set(_split(args.anchors))
    engines = {name for name, module in (("torch", "torch"), ("ort", "onnxruntime"))
               if name in requested_anchors and _import_optional(module) is not None}
    if "ort" in engines and _import_optional("onnx") is None:
        engines.discard("ort")

    n_threads = args.threads
    numgru.set_num_threads(n_threads)
    info = machine_description()
    report = ["# numgru performance comparison", ""]
    report += [f"- {key}: {value}" for key, value in info.items()]
    report += [f"- threads: {_threads_text(n_threads)} for every engine; float32; median of "
               f"{repeats} interleaved repeats, >= {min_time * 1e3:.0f} ms per timing",
               f"- numgru backends: {', '.join(backends)}; anchors: "
               f"{', '.join(sorted(engines)) or 'none'}", ""]
    print("\n".join(report), flush=True)

    problems = []
    sgemm_gflops = measure_sgemm_rate(n_threads=n_threads)
    results = {}
    with _blas_limits(n_threads):
        for shape_name in shape_names:
            contestants = Contestants(shape_name, backends, engines, n_threads)
            calls = contestants.all_calls()
            problems += contestants.problems
            contestants.problems = []
            if not calls:
                continue
            timed = interleaved_timings(calls, repeats, min_time)
            results[shape_name] = timed
            problems += contestants.problems
            spread = "; ".join(
                f"{engine} {kind} {format_seconds(entry['median'])} "
                f"[{format_seconds(entry['min'])}..{format_seconds(entry['max'])}]"
                for (engine, kind), entry in timed.items())
            print(f"{shape_name}: {spread}", file=sys.stderr, flush=True)

    sections = ["## Speed", "",
                "Times are per call; ratio = numgru time / the fastest anchor's "
                "time (below 1: numgru is faster). For the stream step, fwd is "
                "`GRU.step` vs `nn.GRUCell` vs a one-step ONNX Runtime GRU.", "",
                speed_tables(results, backends, sgemm_gflops, n_threads=n_threads),
                "", "Fastest of the repeats instead of the median (less sensitive "
                "to load from other processes, more to luck):", "",
                speed_tables(results, backends, None, statistic="min")]

    if not args.skip_memory:
        memory_results = {}
        memory_shapes = [name for name in shape_names if name != STREAM_STEP]
        for shape_name in memory_shapes:
            entrants = [(f"numgru[{backend}]", "numgru", backend) for backend in backends]
            if "torch" in engines:
                entrants.append(("torch", "torch", "-"))
            for label, engine, backend in entrants:
                try:
                    memory_results[(shape_name, label)] = measure_train_memory(
                        engine, backend, ALL_SHAPES[shape_name])
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    memory_results[(shape_name, label)] = str(exc)
                    problems.append(f"memory {label} {shape_name}: {exc}")
        sections += [
            "", "## Memory of a train step", "",
            "Peak RSS growth: growth of the process's peak resident set size "
            "during a second forward+backward, model and inputs already "
            "allocated, in a fresh process (sees every allocation, including "
            "Numba's). RSS kept after a first step: what the first step of that "
            "shape left resident (compiled code loaded, thread pools started, "
            "work arrays an engine keeps between calls). tracemalloc peak: what "
            "numpy allocations tracemalloc saw during a third step (misses "
            "arrays allocated inside compiled Numba code and PyTorch's tensors). "
            "Activations kept: outputs and four gate values per step.", "",
            memory_table(memory_results)]

    if not args.skip_startup:
        startup_results = {}
        for backend in backends:
            try:
                startup_results[backend] = measure_startup(backend)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                startup_results[backend] = str(exc)
                problems.append(f"start-up {backend}: {exc}")
        sections += [
            "", "## Start-up", "",
            "Fresh processes; cold: `NUMBA_CACHE_DIR` is a new empty directory, "
            "so the first call compiles every kernel it uses; warm: the same "
            "directory, now filled. Shape (32, 50, 8, 32).", "",
            startup_table(startup_results)]

    sections += ["", f"Load average at the end (1, 5, 15 min): {_load_average()}; "
                 f"a load above {os.cpu_count()} means other processes competed "
                 "for the CPUs during the run."]
    if problems:
        sections += ["", "## Problems", ""] + [f"- {problem}" for problem in problems]
    text = "\n".join(sections)
    print(text, flush=True)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write("\n".join(report) + "\n" + text + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
