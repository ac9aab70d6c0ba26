"""Every public loss and measure carries a runnable example in its docstring, and the
examples run (as optax's do)."""

import doctest
import importlib
import pkgutil

import pytest

import pmrl_jax.losses
from pmrl_jax import losses
from pmrl_jax.losses import blocked

MODULES = sorted(f"pmrl_jax.losses.{m.name}" for m in pkgutil.iter_modules(pmrl_jax.losses.__path__))


def test_every_public_function_has_an_example():
    functions = [name for name in losses.__all__ if callable(getattr(losses, name)) and name != "Similarity"]
    targets = {name: getattr(losses, name) for name in functions}
    targets.update({f"blocked.{name}": getattr(blocked, name) for name in dir(blocked) if name.startswith("blocked_")})
    missing = [name for name, target in targets.items() if ">>>" not in (target.__doc__ or "")]
    assert not missing, f"public functions without an example in their docstring: {missing}"


@pytest.mark.parametrize("module", MODULES)
def test_the_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module}"
