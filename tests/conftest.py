"""Under pytest-xdist every worker is a process of its own: one CPU device each, so the
workers, not the devices, share the cores (robustgan/parallel.py reads this before JAX
starts). Tests that need several devices start subprocesses with their own setting."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("ROBUSTGAN_CPU_DEVICES", "1")
