"""Every test sees 8 fake CPU devices; the flag must be set before jax is imported."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests (and the job subprocesses and notebook kernels, which inherit the
# environment) compile the same smoke-sized programs: a persistent compilation cache,
# fresh for each session, compiles each once. jax keys it by the program and the flags.
# pytest loads this file before it starts the xdist workers, which inherit the variable:
# the workers share one cache.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="pmrl_jax_test_jit_cache_")

import hypothesis  # noqa: E402

# Compilation makes the first example of a property slow; keep runs bounded by count.
hypothesis.settings.register_profile("pmrl", deadline=None, max_examples=30, derandomize=True)
hypothesis.settings.load_profile("pmrl")
