"""Memory-bounded forms of the batch-contrastive losses over a sharded global batch.

The unblocked losses build the global [B, B] score matrix (sharded by rows under
`jax.jit`, so each device still holds [B / n, B] scores and their softmaxes). Here,
inside `jax.shard_map` over the mesh's batch axes, each device keeps its B / n
instances and the candidate blocks travel round the ring of devices
(`jax.lax.ppermute`), each carrying the column logsumexps and sums it collects on its
way. A step holds one [B / n, B / n] block of scores and is rematerialised in the
backward pass (`jax.checkpoint`), so a device's scores never exceed B^2 / n^2 at a time.
The formulas are the unblocked losses' (their docstrings, docs/math.md); values and
gradients equal theirs up to float32 summation order (autodiff transposes ppermute
exactly), tested on 1, 2, 4 and 8 devices.

Call them under `jax.set_mesh(mesh)` with the batch sharded over `axis_name` (default:
every axis of the mesh).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from pmrl_jax.losses import common
from pmrl_jax.losses.geometry import volume_matrix
from pmrl_jax.losses.infonce import cosine_matrix
from pmrl_jax.losses.spectral import spectrum
from pmrl_jax.losses.triangle import _doubled_squared_area


def _ring_statistics(score, queries, candidates, extra, *, axis, size: int, columns: bool):
    """Over the ring: for the local rows, logsumexp and sum of their logits over every
    candidate, and their positives (the diagonal); with `columns`, the same for the
    local candidates over every query. `score(queries, candidate_block, *extra)` gives
    a block of logits."""
    n = jax.tree.leaves(queries)[0].shape[0]
    to_previous = [(i, (i - 1) % size) for i in range(size)]

    def step(carry, t):
        block, row_lse, row_sum, positive, column_lse, column_sum = carry
        logits = score(queries, block, *extra)  # rows: this device's; columns: block (p + t) % size
        row_lse = jnp.logaddexp(row_lse, jax.nn.logsumexp(logits, axis=1))
        row_sum = row_sum + jnp.sum(logits, axis=1)
        positive = jnp.where(t == 0, jnp.diagonal(logits), positive)
        if columns:
            column_lse = jnp.logaddexp(column_lse, jax.nn.logsumexp(logits, axis=0))
            column_sum = column_sum + jnp.sum(logits, axis=0)
        # After `size` moves every block (and what it collected) is back with its owner.
        block, column_lse, column_sum = jax.lax.ppermute((block, column_lse, column_sum), axis, to_previous)
        return (block, row_lse, row_sum, positive, column_lse, column_sum), None

    minus_inf, zeros = jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32)
    start = (candidates, minus_inf, zeros, zeros, minus_inf, zeros)
    (_, row_lse, row_sum, positive, column_lse, column_sum), _ = jax.lax.scan(
        jax.checkpoint(step), start, jnp.arange(size))
    return row_lse, row_sum, positive, column_lse, column_sum


def _symmetric_ce(score, queries, candidates, extra, label_smoothing, *, axis, size):
    row_lse, row_sum, positive, column_lse, column_sum = _ring_statistics(
        score, queries, candidates, extra, axis=axis, size=size, columns=True)
    total = size * positive.shape[0]
    rows, columns = row_lse - positive, column_lse - positive
    if label_smoothing:
        rows = (1.0 - label_smoothing) * rows + label_smoothing * (row_lse - row_sum / total)
        columns = (1.0 - label_smoothing) * columns + label_smoothing * (column_lse - column_sum / total)
    return 0.5 * jax.lax.psum(jnp.sum(rows) + jnp.sum(columns), axis) / total


def _sharded(fn, *args, axis_name=None):
    """Runs fn(*local blocks, axis=..., size=...) under shard_map: arrays with a batch
    axis split over `axis_name`, scalars replicated; a scalar result."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        raise ValueError("the blocked losses run under a mesh: call them inside `with jax.set_mesh(mesh):`")
    if axis_name is None:
        axes = tuple(mesh.axis_names)
    else:
        axes = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    size = math.prod(mesh.shape[a] for a in axes)
    batch = jnp.shape(args[0])[0]
    common.check_batch(args[0], "the batch")
    if batch % size:
        raise ValueError(f"the global batch of {batch} is not divisible by the {size} devices of axes {axes}")
    specs = tuple(P(axes) if jnp.ndim(a) > 0 else P() for a in args)
    body = functools.partial(fn, axis=axes, size=size)
    return jax.shard_map(body, in_specs=specs, out_specs=P(), check_vma=False)(*args)


def _cosine_logits(a, b, temperature):
    return cosine_matrix(a, b) / temperature


def blocked_infonce_loss(a, b, *, temperature, label_smoothing: float = 0.0, axis_name=None) -> jax.Array:
    """`infonce_loss` (symmetric CLIP InfoNCE) over a ring of devices.

    Example (on every device of this host, under its mesh; the batch divides them):
        >>> import jax
        >>> from pmrl_jax import losses, sharding
        >>> from pmrl_jax.losses import blocked
        >>> a, b = jax.random.normal(jax.random.key(0), (2, 8, 16))
        >>> with jax.set_mesh(sharding.make_mesh()):
        ...     value = blocked.blocked_infonce_loss(a, b, temperature=0.07)
        >>> bool(abs(value - losses.infonce_loss(a, b, temperature=0.07)) < 1e-4)
        True
    """
    common.check_temperature(temperature)
    common.check_label_smoothing(label_smoothing)

    def local(a, b, temperature, *, axis, size):
        return _symmetric_ce(_cosine_logits, a, b, (temperature,), label_smoothing, axis=axis, size=size)

    return _sharded(local, a, b, jnp.asarray(temperature, jnp.float32), axis_name=axis_name)


def blocked_anchored_infonce_loss(x, *, temperature, anchor: int = 0, axis_name=None) -> jax.Array:
    """`anchored_infonce_loss`: sum over m != anchor of InfoNCE(x_anchor, x_m), one ring each.

    Example:
        >>> import jax
        >>> from pmrl_jax import losses, sharding
        >>> from pmrl_jax.losses import blocked
        >>> x = jax.random.normal(jax.random.key(0), (8, 3, 16))
        >>> with jax.set_mesh(sharding.make_mesh()):
        ...     value = blocked.blocked_anchored_infonce_loss(x, temperature=0.07, anchor=1)
        >>> bool(abs(value - losses.anchored_infonce_loss(x, temperature=0.07, anchor=1)) < 1e-4)
        True
    """
    common.check_modalities(x, "x", min_k=2)
    return sum(blocked_infonce_loss(x[:, anchor], x[:, m], temperature=temperature, axis_name=axis_name)
               for m in range(x.shape[1]) if m != anchor)


def _volume_logits(anchor, others, temperature):
    return -volume_matrix(anchor, others) / temperature


def blocked_gram_contrastive_loss(anchor, others, *, temperature, label_smoothing: float = 0.1,
                                  axis_name=None) -> jax.Array:
    """`gram_contrastive_loss` (GRAM's symmetric volume InfoNCE) over a ring of devices.

    Example:
        >>> import jax
        >>> from pmrl_jax import losses, sharding
        >>> from pmrl_jax.losses import blocked
        >>> x = jax.random.normal(jax.random.key(0), (8, 3, 16))
        >>> with jax.set_mesh(sharding.make_mesh()):
        ...     value = blocked.blocked_gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=0.07)
        >>> bool(abs(value - losses.gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=0.07)) < 1e-4)
        True
    """
    common.check_rank(anchor, "anchor", 2, "[batch, d]")
    common.check_others(others)
    common.check_temperature(temperature)
    common.check_label_smoothing(label_smoothing)

    def local(anchor, others, temperature, *, axis, size):
        return _symmetric_ce(_volume_logits, anchor, others, (temperature,), label_smoothing, axis=axis, size=size)

    return _sharded(local, anchor, others, jnp.asarray(temperature, jnp.float32), axis_name=axis_name)


def _area_logits(anchor, others, temperature):
    return -_doubled_squared_area(anchor, others) / temperature


def blocked_triangle_contrastive_loss(anchor, others, *, temperature, label_smoothing: float = 0.1,
                                      axis_name=None) -> jax.Array:
    """`triangle_contrastive_loss` (k = 3) over a ring of devices.

    Example:
        >>> import jax
        >>> from pmrl_jax import losses, sharding
        >>> from pmrl_jax.losses import blocked
        >>> x = jax.random.normal(jax.random.key(0), (8, 3, 16))
        >>> with jax.set_mesh(sharding.make_mesh()):
        ...     value = blocked.blocked_triangle_contrastive_loss(x[:, 0], x[:, 1:], temperature=0.07)
        >>> bool(abs(value - losses.triangle_contrastive_loss(x[:, 0], x[:, 1:], temperature=0.07)) < 1e-4)
        True
    """
    common.check_temperature(temperature)
    common.check_label_smoothing(label_smoothing)

    def local(anchor, others, temperature, *, axis, size):
        return _symmetric_ce(_area_logits, anchor, others, (temperature,), label_smoothing, axis=axis, size=size)

    return _sharded(local, anchor, others, jnp.asarray(temperature, jnp.float32), axis_name=axis_name)


def blocked_symile_loss(x, *, temperature, axis_name=None) -> jax.Array:
    """`symile_loss` over a ring of devices (row cross-entropies only, as Symile's).

    Example:
        >>> import jax
        >>> from pmrl_jax import losses, sharding
        >>> from pmrl_jax.losses import blocked
        >>> x = jax.random.normal(jax.random.key(0), (8, 3, 16))
        >>> with jax.set_mesh(sharding.make_mesh()):
        ...     value = blocked.blocked_symile_loss(x, temperature=0.07)
        >>> bool(abs(value - losses.symile_loss(x, temperature=0.07)) < 1e-4)
        True
    """
    common.check_modalities(x, "x", min_k=2)
    common.check_temperature(temperature)

    def local(x, temperature, *, axis, size):
        x = common.l2_normalize(x)
        k, total = x.shape[1], size * x.shape[0]
        losses = []
        for m in range(k):
            rest = jnp.prod(jnp.concatenate([x[:, :m], x[:, m + 1:]], axis=1), axis=1)
            row_lse, _, positive, _, _ = _ring_statistics(
                lambda q, c, t: q @ c.T / t, x[:, m], rest, (temperature,), axis=axis, size=size, columns=False)
            losses.append(jax.lax.psum(jnp.sum(row_lse - positive), axis) / total)
        return sum(losses) / k

    return _sharded(local, x, jnp.asarray(temperature, jnp.float32), axis_name=axis_name)


def blocked_pmrl_loss(x, *, alignment_temperature=0.05, regularization_temperature=0.1,
                      regularization_weight: float = 1.0, axis_name=None) -> jax.Array:
    """`pmrl_loss`: the alignment term is per instance; the regulariser's logsumexp over
    the global batch of leading directions goes round the ring.

    Example:
        >>> import jax
        >>> from pmrl_jax import losses, sharding
        >>> from pmrl_jax.losses import blocked
        >>> x = jax.random.normal(jax.random.key(0), (8, 3, 16))
        >>> with jax.set_mesh(sharding.make_mesh()):
        ...     value = blocked.blocked_pmrl_loss(x)
        >>> bool(abs(value - losses.pmrl_loss(x)) < 1e-4)
        True
    """
    from pmrl_jax.losses.pmrl import _alignment

    common.check_modalities(x, "x", min_k=2)
    common.check_temperature(alignment_temperature)
    common.check_temperature(regularization_temperature)

    def local(x, tau1, tau2, *, axis, size):
        singular, directions = spectrum(common.l2_normalize(x))
        total = size * x.shape[0]
        alignment = jax.lax.psum(_alignment(singular, tau1) * x.shape[0], axis) / total
        row_lse, _, _, _, _ = _ring_statistics(lambda q, c, t: q @ c.T / t, directions, directions, (tau2,),
                                               axis=axis, size=size, columns=False)
        regularization = jax.lax.psum(jnp.sum(row_lse), axis) / total - 1.0 / tau2
        return alignment + regularization_weight * regularization

    return _sharded(local, x, jnp.asarray(alignment_temperature, jnp.float32),
                    jnp.asarray(regularization_temperature, jnp.float32), axis_name=axis_name)
