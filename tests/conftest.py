"""Test-run settings, read before JAX starts.

Under pytest-xdist every worker is a process of its own: one CPU device each, so the
workers, not the devices, share the cores (robustgan/parallel.py reads this before JAX
starts). Tests that need several devices start subprocesses with their own setting.

The tiny tests are compile-bound and many compile the same programs (the same toy model's
train and attack steps in different runs), so one test run shares a fresh persistent
compilation cache between its tests and workers: the controller makes the folder, the
workers and subprocesses inherit it, and it is removed when the run ends.
"""

import atexit
import os
import shutil
import tempfile

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("ROBUSTGAN_CPU_DEVICES", "1")
elif "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="robustgan-test-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
