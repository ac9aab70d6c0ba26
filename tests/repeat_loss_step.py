"""Compiles one loss's forward+backward and runs it 20 times; run in a fresh process by
test_no_hang.py (docs/architecture.md, "Numerics": programs holding two LAPACK SVDs hung
intermittently here, so each loss must survive repeated execution)."""

import sys

import jax
import numpy as np

from loss_table import LOSSES, default_k

name = sys.argv[1]
loss = LOSSES[name][0]
x = np.random.default_rng(0).normal(size=(64, default_k(name), 128)).astype(np.float32)
step = jax.jit(jax.value_and_grad(loss))
for i in range(20):
    value, grad = step(x + i * 1e-3)
    jax.block_until_ready(grad)
    assert np.isfinite(float(value))
print(f"{name}: 20 steps ok")
