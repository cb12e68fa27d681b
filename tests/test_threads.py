"""Compiled kernels use the threads they are given, and no more.

A separate sampler process reads the state of every thread of this process
(``/proc/<pid>/task/*/stat``) every millisecond while a compiled backend
runs forward and train steps. Oversubscription (for instance BLAS threads
spinning next to Numba's) shows up as more runnable threads than
``numgru.set_num_threads`` allows. The counts describe this process only, so
load from other processes cannot inflate them: the checks hold on a busy
machine. No assertion depends on how fast anything runs.
"""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import numgru

COMPILED_BACKENDS = [name for name in numgru.available_backends() if name != "numpy"]
SAMPLE_SECONDS = 0.6
SHAPE = (64, 100, 32, 128)

pytestmark = [
    pytest.mark.skipif(not os.path.isdir("/proc/self/task"),
                       reason="needs Linux's /proc"),
]

_SAMPLER = r"""
import json, os, select, sys
task_dir = "/proc/%s/task" % sys.argv[1]
interval = float(sys.argv[2])
runnable, totals = [], []
print("ready", flush=True)
while not select.select([sys.stdin], [], [], interval)[0]:
    tids = os.listdir(task_dir)
    count = 0
    for tid in tids:
        try:
            with open(os.path.join(task_dir, tid, "stat")) as stat:
                count += stat.read().rsplit(")", 1)[1].split()[0] == "R"
        except OSError:
            pass
    runnable.append(count)
    totals.append(len(tids))
print(json.dumps({"runnable": runnable, "totals": totals}))
"""


def run_while_sampling(work, seconds=SAMPLE_SECONDS, interval=0.001):
    """Call ``work`` repeatedly for ``seconds`` while sampling this process's threads.

    Returns
    -------
    runnable : ndarray of int
        Threads of this process in state R (running or waiting for a CPU)
        at each sample.
    totals : ndarray of int
        Number of threads of this process at each sample.
    cpu_per_wall : float
        CPU time this process used per second of wall time while working.
    """
    sampler = subprocess.Popen(
        [sys.executable, "-c", _SAMPLER, str(os.getpid()), str(interval)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert sampler.stdout.readline().strip() == "ready"
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        n_calls = 0
        while n_calls < 3 or time.perf_counter() - wall_start < seconds:
            work()
            n_calls += 1
        cpu_per_wall = ((time.process_time() - cpu_start)
                        / (time.perf_counter() - wall_start))
        output, _ = sampler.communicate("stop\n", timeout=60)
    finally:
        if sampler.poll() is None:
            sampler.kill()
            sampler.wait()
    samples = json.loads(output.strip().splitlines()[-1])
    return (np.array(samples["runnable"]), np.array(samples["totals"]), cpu_per_wall)


def make_work(backend):
    """Alternating forward and train steps at a medium shape (kernels dominate)."""
    n_samples, n_steps, n_inputs, n_hidden = SHAPE
    gru = numgru.GRU(n_inputs, n_hidden, backend=backend, random_state=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n_samples, n_steps, n_inputs)).astype(np.float32)
    d_output = rng.standard_normal((n_samples, n_steps, n_hidden)).astype(np.float32)

    def work():
        gru.forward(x)
        _, _, cache = gru.forward(x, return_cache=True)
        gru.backward(cache, d_output)

    return work


def test_sampler_sees_a_busy_thread():
    def spin():
        end = time.perf_counter() + 0.01
        while time.perf_counter() < end:
            pass

    runnable, totals, _ = run_while_sampling(spin)
    assert len(runnable) > 10
    assert np.median(runnable) >= 1
    assert totals.min() >= 1


@pytest.mark.skipif(not COMPILED_BACKENDS, reason="no compiled backend")
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_runnable_threads_stay_within_the_limit(backend, n_threads):
    n_threads = min(n_threads, os.cpu_count() or 1)
    numgru.set_num_threads(n_threads)
    work = make_work(backend)
    work()
    threads_after_warm_up = len(os.listdir("/proc/self/task"))
    runnable, totals, cpu_per_wall = run_while_sampling(work)
    assert len(runnable) >= 20, "the sampler took too few samples"
    # Thread pools are created once: calls do not add threads. (A thread
    # left behind by an earlier test may come or go during a few samples.)
    assert np.percentile(totals, 90) <= threads_after_warm_up, np.bincount(totals)
    # Most of the time no more threads want a CPU than were allowed.
    assert np.percentile(runnable, 75) <= n_threads, np.bincount(runnable)
    # CPU time per wall second is at most the thread count; busy neighbours
    # can only lower it.
    assert cpu_per_wall <= n_threads + 0.5


@pytest.mark.skipif(not COMPILED_BACKENDS, reason="no compiled backend")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs")
def test_oversubscription_would_be_detected():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    numgru.set_num_threads(2)
    work = make_work(COMPILED_BACKENDS[0])
    work()
    a = np.random.default_rng(0).standard_normal((768, 768)).astype(np.float32)
    stop = threading.Event()

    def blas_load():
        with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
            while not stop.is_set():
                a @ a

    blas_info = threadpoolctl.threadpool_info()
    if not any(pool["user_api"] == "blas" for pool in blas_info):
        pytest.skip("numpy's BLAS is not visible to threadpoolctl")
    loader = threading.Thread(target=blas_load, daemon=True)
    loader.start()
    try:
        runnable, _, _ = run_while_sampling(work)
    finally:
        stop.set()
        loader.join()
    # numgru's 2 threads plus the BLAS threads: the sampler must see more
    # runnable threads than the limit for this check to mean anything.
    assert np.percentile(runnable, 75) > 2, np.bincount(runnable)
