"""Evaluation: threat models and measures over a Classifier.

- `batching`: per-example outputs of a jitted function over a dataset, batch by batch.
- `columns`: evaluation columns by name ('fgsm', 'pgd', 'bpda(pgd)', 'eot(pgd, 10)', ...).
- `protocol`: accuracy under a set of columns (white box, transfer), per-example Min,
  and the protocol measures every evaluation reports.
- `measures`: robustness curves, rho, eps_ref, sanity checks.
- `blackbox`: transfer and substitute-training threat models.

Import the submodules (`from robustgan.evaluate import protocol`); this package file
imports nothing, so the submodules depend on each other only as listed in
docs/ARCHITECTURE.md.
"""
