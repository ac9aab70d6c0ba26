"""Independent, deliberately naive formulations the library is checked against:
stacked per-pair Gram matrices with `jnp.linalg.det`, and full SVDs. They are exact
away from degeneracy and say nothing about speed or stability."""

import jax
import jax.numpy as jnp
import numpy as np


def normalize(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def volume(rows):
    """sqrt(det(V V^T)) by LU."""
    return jnp.sqrt(jnp.linalg.det(rows @ jnp.swapaxes(rows, -1, -2)))


def volume_matrix(anchor, others):
    return volume_matrix_of_rows(normalize(anchor), normalize(others))


def volume_matrix_of_rows(anchor, others):
    """Volumes of (anchor_i, others_j...) as given, without normalising."""
    b1, b2 = anchor.shape[0], others.shape[0]
    rows = jnp.concatenate(
        [
            jnp.broadcast_to(anchor[:, None, None, :], (b1, b2, 1, anchor.shape[-1])),
            jnp.broadcast_to(others[None], (b1,) + others.shape),
        ],
        axis=2,
    )
    return volume(rows)


def cross_entropy(logits, smoothing=0.0):
    """Explicit one-hot (smoothed) targets."""
    n = logits.shape[0]
    targets = jnp.eye(n, logits.shape[1]) * (1 - smoothing) + smoothing / logits.shape[1]
    return jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def symmetric_ce(logits, smoothing=0.0):
    return 0.5 * (cross_entropy(logits, smoothing) + cross_entropy(logits.T, smoothing))


def gram_loss(anchor, others, temperature, smoothing=0.1):
    return symmetric_ce(-volume_matrix(anchor, others) / temperature, smoothing)


def singular_values(x):
    return jnp.linalg.svd(x, compute_uv=False)


def leading_direction(x):
    """u_1 from an SVD of Z^T ([d, k], as the official code; thin, since JAX does not
    differentiate full_matrices=True), sign fixed by sum_m <u, z_m> >= 0, ties (a zero
    sum) broken by <u, z_1> >= 0."""
    u, s, vt = jnp.linalg.svd(jnp.swapaxes(x, -1, -2), full_matrices=False)
    u1 = u[..., :, 0]
    projections = jnp.einsum("...d,...kd->...k", u1, x)
    total = jnp.sum(projections, axis=-1)
    key = jnp.where(jnp.abs(total) > 1e-5 * s[..., 0], total, projections[..., 0])
    sign = jnp.where(key >= 0, 1.0, -1.0)
    return u1 * sign[..., None]


def pmrl_alignment(x, t1):
    s = singular_values(normalize(x)) / t1
    return jnp.mean(jax.nn.logsumexp(s, -1) - s[:, 0])


def pmrl_regularization(x, t2):
    u = leading_direction(normalize(x))
    logits = u @ u.T / t2
    return jnp.mean(jax.nn.logsumexp(logits, -1) - 1.0 / t2)


def infonce(a, b, t, smoothing=0.0):
    return symmetric_ce(normalize(a) @ normalize(b).T / t, smoothing)


def symile(x, t):
    x = normalize(x)
    k = x.shape[1]
    total = 0.0
    for m in range(k):
        # MIP(x_im, x_jn for n != m) = sum_d x_im[d] prod_{n != m} x_jn[d], pair by pair.
        others = [x[:, n] for n in range(k) if n != m]
        scores = jnp.einsum("id,jd->ij", x[:, m], _prod(others))
        total = total + cross_entropy(scores / t)
    return total / k


def _prod(arrays):
    out = arrays[0]
    for a in arrays[1:]:
        out = out * a
    return out


def triangle_score(anchor, others):
    """(|t-v|^2 |t-a|^2 - <t-v, t-a>^2) / 2 from explicit difference vectors."""
    t, v, a = normalize(anchor)[:, None], normalize(others[:, 0])[None], normalize(others[:, 1])[None]
    tv, ta = t - v, t - a
    return (jnp.sum(tv**2, -1) * jnp.sum(ta**2, -1) - jnp.sum(tv * ta, -1) ** 2) / 2


def random_rotation(rng, d):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))
