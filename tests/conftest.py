"""Every test sees 8 fake CPU devices; the flag must be set before jax is imported."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hypothesis  # noqa: E402

# Compilation makes the first example of a property slow; keep runs bounded by count.
hypothesis.settings.register_profile("pmrl", deadline=None, max_examples=30, derandomize=True)
hypothesis.settings.load_profile("pmrl")
