"""The NNX modules: encoders of every kind, the temperature, the matching head and its
hard negatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pmrl_jax.models import MatchingHead, MultimodalModel, Temperature, matching_loss, sample_hard_negatives

TEMPERATURE = dict(initial=0.07, minimum=0.01, maximum=1.0)


def _model(matching=True, dropout=0.0):
    shapes = {"feat": (7,), "text": (12,), "video": (2, 32, 32, 3), "image": (32, 32, 3), "audio": (32, 64)}
    options = {"feat": {"kind": "mlp", "dropout": dropout}, "text": {"kind": "transformer", "vocab_size": 50},
               "video": {"kind": "vit", "patch_size": 16}, "image": {"kind": "vit", "patch_size": 8},
               "audio": {"kind": "audio", "patch_size": (16, 16)}}
    return MultimodalModel(list(shapes), shapes, options, width=32, embed_dim=16, temperature=TEMPERATURE,
                           matching=dict(heads=4) if matching else None, rngs=nnx.Rngs(0))


def _batch(b=5):
    keys = jax.random.split(jax.random.key(1), 5)
    text = jax.random.randint(keys[1], (b, 12), 1, 50).at[:, 9:].set(0)  # the last 3 tokens are padding
    return {"feat": jax.random.normal(keys[0], (b, 7)), "text": text,
            "video": jax.random.normal(keys[2], (b, 2, 32, 32, 3)), "image": jax.random.normal(keys[3], (b, 32, 32, 3)),
            "audio": jax.random.normal(keys[4], (b, 32, 64))}


@nnx.jit
def _forward(model, batch):
    return model(batch)


def test_every_encoder_kind_gives_unit_embeddings_and_tokens():
    z, tokens = _forward(_model(), _batch())
    assert z.shape == (5, 5, 16) and z.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0, rtol=1e-5)
    assert {k: v.shape for k, v in tokens.items()} == {
        "feat": (5, 1, 32), "text": (5, 12, 32), "video": (5, 4, 32), "image": (5, 16, 32), "audio": (5, 8, 32)}


def test_text_padding_does_not_change_the_embedding():
    model, batch = _model(), _batch()
    longer = dict(batch, text=jnp.concatenate([batch["text"], jnp.zeros((5, 4), jnp.int32)], axis=1))
    np.testing.assert_allclose(_forward(model, longer)[0], _forward(model, batch)[0], atol=1e-6)
    real_change = dict(batch, text=batch["text"].at[:, 0].set(3))
    assert not np.allclose(_forward(model, batch)[0][:, 1], _forward(model, real_change)[0][:, 1])


def test_dropout_only_with_rngs():
    model, batch = _model(dropout=0.5), _batch()
    np.testing.assert_array_equal(model(batch)[0], model(batch)[0])
    a = model(batch, rngs=nnx.Rngs(dropout=0))[0][:, 0]
    b = model(batch, rngs=nnx.Rngs(dropout=1))[0][:, 0]
    assert not np.allclose(a, b)


@pytest.mark.parametrize("kind,shape,message", [
    ("feat", (5, 7, 1), "feature vectors"), ("audio", (5, 32), "spectrograms"), ("video", (5, 32, 32), "images")])
def test_wrong_input_shapes_name_the_encoder(kind, shape, message):
    batch = dict(_batch(), **{kind: jnp.zeros(shape)})
    with pytest.raises(ValueError, match=message):
        _model()(batch)


def test_temperature_is_clamped_and_log_parameterised():
    t = Temperature(0.07, minimum=0.01, maximum=1.0)
    assert float(t()) == pytest.approx(0.07, rel=1e-6)
    t.log_temperature[...] = jnp.asarray(-10.0)
    assert float(t()) == pytest.approx(0.01, rel=1e-6)
    fixed = Temperature(0.1, minimum=0.01, maximum=1.0, learnable=False)
    assert not nnx.state(fixed, nnx.Param)
    with pytest.raises(ValueError, match="minimum"):
        Temperature(0.0, minimum=0.0, maximum=1.0)


def test_hard_negatives_never_pick_the_positive_and_follow_the_scores():
    b = 8
    hard = jnp.where(jnp.arange(b)[None, :] == (jnp.arange(b)[:, None] + 1) % b, 10.0, 0.0)  # one hard candidate
    keys = jax.random.split(jax.random.key(0), 200)
    rows, columns = jax.vmap(lambda k: sample_hard_negatives(hard, k))(keys)
    assert not np.any(np.asarray(rows) == np.arange(b)) and not np.any(np.asarray(columns) == np.arange(b))
    assert np.mean(np.asarray(rows) == (np.arange(b) + 1) % b) > 0.9      # softmax over the row favours the hard one
    assert np.mean(np.asarray(columns) == (np.arange(b) - 1) % b) > 0.9   # and over the column
    # A dominant positive takes the softmax mass; the 1e-4 floor then spreads the draws
    # over the other candidates, and the positive is still never drawn.
    rows, _ = jax.vmap(lambda k: sample_hard_negatives(hard + 100.0 * jnp.eye(b), k))(keys)
    assert not np.any(np.asarray(rows) == np.arange(b))
    assert len(np.unique(np.asarray(rows)[:, 0])) == b - 1


def test_matching_head_trains_on_single_tokens_and_gets_no_gradient_through_scores():
    head = MatchingHead(16, width=8, heads=2, rngs=nnx.Rngs(0))
    anchor, data = jax.random.normal(jax.random.key(0), (2, 6, 1, 16))
    scores = jax.random.normal(jax.random.key(1), (6, 6))
    loss, grad = nnx.jit(lambda h, s: jax.value_and_grad(
        lambda s: matching_loss(h, anchor, data, s, jax.random.key(2)))(s))(head, scores)
    assert np.isfinite(loss) and loss > 0
    np.testing.assert_array_equal(grad, 0.0)
    params_grad = nnx.jit(nnx.grad(lambda h: matching_loss(h, anchor, data, scores, jax.random.key(2))))(head)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(params_grad))
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(params_grad)) > 0


def _adapter_model(widths, embed_dim, depth=1, statistics=None):
    shapes = {f"m{i}": (w,) for i, w in enumerate(widths)}
    options = {m: {"kind": "adapter", "depth": depth} for m in shapes}
    return MultimodalModel(list(shapes), shapes, options, width=32, embed_dim=embed_dim, temperature=TEMPERATURE,
                           matching=dict(heads=2), statistics=statistics, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("depth", [0, 2])
def test_the_adapter_starts_from_its_inputs(depth):
    """At initialisation the embeddings are the unit inputs (equal widths), or keep every
    cosine between two inputs (inputs narrower than the shared space): training starts
    from the frozen inputs' retrieval."""
    rng = np.random.default_rng(0)
    x = {"m0": rng.standard_normal((6, 24)).astype(np.float32), "m1": rng.standard_normal((6, 24)).astype(np.float32)}
    z, tokens = _forward(_adapter_model([24, 24], 24, depth), x)
    for i, m in enumerate(x):
        np.testing.assert_allclose(z[:, i], x[m] / np.linalg.norm(x[m], axis=1, keepdims=True), atol=1e-6)
    assert tokens["m0"].shape == (6, 1, 24)
    wide, _ = _forward(_adapter_model([24, 24], 40, depth), x)
    unit = {m: v / np.linalg.norm(v, axis=1, keepdims=True) for m, v in x.items()}
    np.testing.assert_allclose(np.asarray(wide[:, 0]) @ np.asarray(wide[:, 1]).T, unit["m0"] @ unit["m1"].T,
                               atol=1e-5)
    # Narrower: one fixed random projection for every modality of a width.
    model = _adapter_model([24, 24], 8, depth)
    np.testing.assert_array_equal(model.encoders["m0"].linear.kernel[...], model.encoders["m1"].linear.kernel[...])


def test_the_adapters_residual_learns():
    model = _adapter_model([8, 8], 8, depth=1)
    x = {m: jnp.ones((4, 8)) for m in ("m0", "m1")}
    grads = nnx.grad(lambda model: jnp.sum(model(x)[0][:, 0, 0]))(model)
    assert float(jnp.abs(grads["encoders"]["m0"]["residual_out"]["kernel"][...]).sum()) > 0


def test_standardisation_inside_the_model_uses_the_given_statistics():
    rng = np.random.default_rng(1)
    mean, std = rng.standard_normal(5).astype(np.float32), rng.uniform(0.5, 2, 5).astype(np.float32)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    standardised = _adapter_model([5, 5], 5, statistics={"m0": (mean, std), "m1": (mean, std)})
    plain = _adapter_model([5, 5], 5)
    np.testing.assert_allclose(_forward(standardised, {"m0": x, "m1": x})[0],
                               _forward(plain, {"m0": (x - mean) / std, "m1": (x - mean) / std})[0], atol=1e-6)
    # statistics are state, not parameters: the optimizer does not see them
    assert not any(leaf.shape == (5,) and np.allclose(leaf, mean)
                   for leaf in jax.tree.leaves(nnx.state(standardised, nnx.Param)))


def test_hard_negatives_are_drawn_at_the_contrastive_temperature():
    """GRAM's and PMRL's code draw from softmax(S / tau): with volumes or cosines in
    [0, 1] the plain softmax over 64 candidates is nearly uniform, and the 'hard'
    negatives would be random."""
    b, tau = 64, 0.07
    scores = jnp.where(jnp.arange(b)[None, :] == (jnp.arange(b)[:, None] + 1) % b, 0.9, 0.1)  # one close candidate
    keys = jax.random.split(jax.random.key(0), 50)
    hardest = (np.arange(b) + 1) % b
    rows, _ = jax.vmap(lambda k: sample_hard_negatives(scores, k, tau))(keys)
    assert np.mean(np.asarray(rows) == hardest) > 0.9
    rows, _ = jax.vmap(lambda k: sample_hard_negatives(scores, k))(keys)  # without the temperature
    assert np.mean(np.asarray(rows) == hardest) < 0.1


@pytest.mark.parametrize("depth,anchor_tokens,data_tokens", [(1, 1, 5), (2, 3, 4), (1, 9, 10)])
def test_the_per_instance_matching_head_equals_the_pairwise_formulation(depth, anchor_tokens, data_tokens):
    """Encoding each instance once and gathering gives the logits, the loss and the
    gradients of gathering the tokens of every pair first (tests/matching_oracle.py)."""
    import matching_oracle

    head = MatchingHead(24, width=16, heads=4, depth=depth, rngs=nnx.Rngs(0))
    keys = jax.random.split(jax.random.key(3), 4)
    anchor = jax.random.normal(keys[0], (6, anchor_tokens, 24))
    data = jax.random.normal(keys[1], (6, data_tokens, 24))
    scores = jax.random.normal(keys[2], (6, 6))
    np.testing.assert_allclose(head(anchor, data), matching_oracle.head_logits(head, anchor, data), rtol=1e-5,
                               atol=1e-6)

    def loss_and_grads(fn):  # compiled: eager, the head's many small ops take several times longer
        return nnx.jit(nnx.value_and_grad(lambda h: fn(h, anchor, data, scores, keys[3], 0.07)))(head)

    (new, new_grads), (old, old_grads) = loss_and_grads(matching_loss), loss_and_grads(matching_oracle.matching_loss)
    np.testing.assert_allclose(new, old, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(new_grads), jax.tree.leaves(old_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_hard_negatives_are_drawn_from_the_stated_distribution():
    """Frequencies over 20,000 draws match softmax(s / tau) + 1e-4 with the positive
    excluded, renormalised, within 5 standard errors for every candidate."""
    b, draws = 6, 20_000
    scores = jax.random.normal(jax.random.key(5), (b, b))
    keys = jax.random.split(jax.random.key(6), draws)
    rows, columns = jax.vmap(lambda k: sample_hard_negatives(scores, k, 0.5))(keys)

    def expected(s):
        weights = np.where(np.eye(b, dtype=bool), 0.0, np.asarray(jax.nn.softmax(s / 0.5, axis=-1)) + 1e-4)
        return weights / weights.sum(axis=1, keepdims=True)

    for drawn, probabilities in ((np.asarray(rows), expected(scores)), (np.asarray(columns), expected(scores.T))):
        frequencies = np.stack([np.bincount(drawn[:, i], minlength=b) for i in range(b)]) / draws
        standard_error = np.sqrt(probabilities * (1 - probabilities) / draws) + 1e-9
        assert np.all(np.abs(frequencies - probabilities) <= 5 * standard_error + 1e-4)
        assert np.all(frequencies[np.eye(b, dtype=bool)] == 0)
