"""The losses and similarity matrices on meshes whose axes are Explicit.

`jax.make_mesh` gives Explicit axes by default. On such a mesh every array's type carries
its sharding, and an op whose result sharding is ambiguous is a trace-time error. The
[B1, B2] score matrices between a batch-sharded query batch and a batch-sharded candidate
batch are such ops ("dot_general ... produces an illegally sharded result"). The losses
and score matrices therefore run with the mesh's Explicit axes made Auto
(`jax.sharding.auto_axes`): the compiler places the gathers, as it does on an Auto mesh.
The result has a declared sharding:

- a loss (a scalar) is replicated;
- a score matrix `[B1, B2]` keeps the query (first) argument's leading-axis sharding on
  its rows. Its columns are not split, as when `jnp.matmul` multiplies a row-sharded
  matrix by a replicated one.

Gradients come back with their inputs' shardings. On an Auto mesh, with no mesh, or inside
`shard_map` (Manual axes), the function is called as it is: nothing is added to the
program.
"""

from __future__ import annotations

import functools
from typing import Callable, Literal

import jax
from jax.sharding import NamedSharding, PartitionSpec as P


def _explicit_mesh(arrays) -> jax.sharding.AbstractMesh | None:
    """The mesh whose Explicit axes the call runs under: the context mesh (`jax.set_mesh`)
    if there is one, else the mesh an input's type names (an Explicit-sharded array
    passed to `jax.jit` without a context mesh). None if it has no Explicit axis."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        for array in arrays:
            input_mesh = getattr(getattr(jax.typeof(array), "sharding", None), "mesh", None)
            if input_mesh is not None and not input_mesh.empty:
                mesh = getattr(input_mesh, "abstract_mesh", input_mesh)
                break
    return mesh if not mesh.empty and mesh.explicit_axes else None


def _row_spec(query: jax.Array, explicit: tuple[str, ...]) -> P:
    """P(leading-axis sharding of `query`, None), keeping only the Explicit axes."""
    if not isinstance(query, jax.Array):
        return P()
    spec = jax.typeof(query).sharding.spec
    leading = spec[0] if len(spec) else None
    names = leading if isinstance(leading, tuple) else (leading,)
    kept = tuple(name for name in names if name in explicit)
    return P(kept[0] if len(kept) == 1 else (kept or None), None)


def runs_in_auto_axes(output: Literal["scalar", "rows"]) -> Callable[[Callable], Callable]:
    """Decorator: run the function with the mesh's Explicit axes made Auto; its output
    is a replicated scalar (`"scalar"`) or a matrix whose rows follow the first
    argument's batch sharding (`"rows"`). Only jax arrays among the arguments (positional
    or keyword) are passed as inputs; Python numbers and strings stay static."""
    if output not in ("scalar", "rows"):
        raise ValueError(f"`output` must be 'scalar' or 'rows'; got {output!r}")

    def decorator(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            leaves, treedef = jax.tree.flatten((args, kwargs))
            is_array = [isinstance(leaf, jax.Array) for leaf in leaves]
            arrays = [leaf for leaf, array in zip(leaves, is_array, strict=True) if array]
            mesh = _explicit_mesh(arrays)
            if mesh is None:
                return fn(*args, **kwargs)
            spec = P() if output == "scalar" else _row_spec(args[0], mesh.explicit_axes)

            def on_arrays(*new_arrays):
                replacements = iter(new_arrays)
                merged = [next(replacements) if array else leaf for leaf, array in zip(leaves, is_array, strict=True)]
                new_args, new_kwargs = jax.tree.unflatten(treedef, merged)
                return fn(*new_args, **new_kwargs)

            return jax.sharding.auto_axes(
                on_arrays, axes=mesh.explicit_axes, out_sharding=NamedSharding(mesh, spec)
            )(*arrays)

        wrapper.auto_axes_output = output  # what the decorator declared, for introspection
        return wrapper

    return decorator
