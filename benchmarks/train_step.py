"""Speed of the compiled training step as a training loop gets it, measured in one run:

    python benchmarks/train_step.py [--configs clip,gram,pmrl] [--steps 30] [--repeats 5] [--smoke]

For each config: the steps/s of its final-stage step called in a plain loop of `--steps`
steps on one global batch already on the devices (the median of `--repeats` repeats,
interleaved with the other rows so that machine noise hits them alike), and, for configs
with the matching head, the same step without it. The ceiling is a minimal hand-written
JAX + optax step of the clip config's model (one MLP tower and projection per modality,
anchored InfoNCE, learned clamped temperature, warmup-cosine AdamW with the same decay
mask and clipping). Then the grain pipeline's examples/s, batches drawn back to back,
apart from the step. It prints the ratios project / minimal (clip) and gram / clip
(step time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from arguments import names_from, positive_int  # noqa: E402
from pmrl_jax import train  # noqa: E402
from pmrl_jax.configs import load_config_file  # noqa: E402
from pmrl_jax.data.pipeline import feature_statistics  # noqa: E402
from pmrl_jax.resolve import prepare  # noqa: E402
from pmrl_jax.trainer import make_trainer  # noqa: E402

CONFIG_NAMES = sorted(path.stem for path in (ROOT / "configs").glob("*.py") if path.stem != "study")
PIPELINE_BATCHES = 20


def load_config(name: str, smoke: bool, **fields):
    config = load_config_file(f"{ROOT / 'configs' / name}.py{':smoke' if smoke else ''}")
    for path, value in fields.items():
        section, _, key = path.rpartition(".")
        (config[section] if section else config)[key] = value
    return config


def project_step(config):
    """(a loop of n steps, the trainer, the source): the config's final-stage step."""
    prepared = prepare(config)
    config, source = prepared.config, prepared.train
    inputs = feature_statistics(source, config.data.modalities)
    trainer = make_trainer(config, prepared.shapes, statistics=inputs)
    batch = trainer.global_batch(next(train.training_iterator(config, source, inputs)))
    step = trainer.step_fn(config.loss.name)
    holder = {"state": trainer.init_state()}
    key = jax.random.key(0)

    def loop(n: int):
        with jax.set_mesh(trainer.mesh):
            for i in range(n):
                holder["state"], metrics = step(holder["state"], batch, np.int32(i + 1), key)
        return metrics["loss"]

    return loop, trainer, source, inputs


def minimal_clip_step(config, trainer, source):
    """The clip config's model and objective written directly in JAX and optax."""
    config = trainer.config
    modalities = list(config.data.modalities)
    anchor = modalities.index(config.loss.anchor)
    width, dim = config.model.width, config.model.embed_dim
    keys = iter(jax.random.split(jax.random.key(0), 3 * len(modalities)))
    params = {"log_tau": jnp.log(jnp.float32(config.model.temperature.initial)), "towers": {}}
    for m in modalities:
        d = trainer.example_shapes[m][0]
        params["towers"][m] = {
            "w": jax.random.normal(next(keys), (d, width)) / np.sqrt(d), "b": jnp.zeros(width),
            "scale": jnp.ones(width), "bias": jnp.zeros(width),
            "projection": jax.random.normal(next(keys), (width, dim)) / np.sqrt(width)}
    low, high = np.log(config.model.temperature.minimum), np.log(config.model.temperature.maximum)
    opt = config.optimizer
    schedule = optax.warmup_cosine_decay_schedule(0.0, opt.learning_rate, opt.warmup_steps, config.num_steps)
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm),
                     optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                                 mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))

    def embed(tower, x):
        h = jax.nn.gelu(x @ tower["w"] + tower["b"])
        mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + 1e-6) * tower["scale"] + tower["bias"]
        z = h @ tower["projection"]
        return z / jnp.linalg.norm(z, axis=-1, keepdims=True)

    def loss_fn(params, batch):
        tau = jnp.exp(jnp.clip(params["log_tau"], low, high))
        z = {m: embed(params["towers"][m], batch[m]) for m in modalities}
        labels = jnp.arange(z[modalities[anchor]].shape[0])
        total = 0.0
        for m in modalities:
            if m != modalities[anchor]:
                logits = z[modalities[anchor]] @ z[m].T / tau
                total += 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                                + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())
        return total

    @jax.jit
    def step(params, state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    from pmrl_jax.data.pipeline import read_batch

    batch = {m: jnp.asarray(v) for m, v in read_batch(source, np.arange(config.data.batch_size)).items()
             if m in modalities}
    holder = {"params": params, "state": tx.init(params)}

    def loop(n: int):
        for _ in range(n):
            holder["params"], holder["state"], loss = step(holder["params"], holder["state"], batch)
        return loss

    return loop


def steps_per_second(loop, steps: int) -> float:
    start = time.perf_counter()
    jax.block_until_ready(loop(steps))
    return steps / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=names_from(CONFIG_NAMES), default="clip,gram,pmrl")
    parser.add_argument("--steps", type=positive_int, default=30, help="steps per timed loop")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed loops per row (the median is shown)")
    parser.add_argument("--smoke", action="store_true", help="the configs' :smoke variants (for the test suite)")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} device(s); {args.steps} steps per "
          f"loop, median of {args.repeats} interleaved loops")
    rows, batch_sizes = {}, {}
    for name in args.configs:
        config = load_config(name, args.smoke)
        rows[name], trainer, source, inputs = project_step(config)
        batch_sizes[name] = trainer.config.data.batch_size
        if trainer.config.model.matching.enabled:
            rows[f"{name} (no head)"] = project_step(load_config(name, args.smoke, **{"model.matching.enabled": False,
                                                                                     "evals": ("retrieval",)}))[0]
            batch_sizes[f"{name} (no head)"] = batch_sizes[name]
        if name == "clip":
            rows["minimal JAX clip"] = minimal_clip_step(config, trainer, source)
            batch_sizes["minimal JAX clip"] = batch_sizes[name]
            pipeline = (trainer, source, inputs)
    for loop in rows.values():  # compile and warm up
        jax.block_until_ready(loop(2))
    rates = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, loop in rows.items():
            rates[name].append(steps_per_second(loop, args.steps))
    print(f"{'step':22s} {'steps/s':>8s} {'range':>15s} {'examples/s':>11s}")
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        print(f"{name:22s} {median[name]:8.2f} {min(values):7.2f}-{max(values):<7.2f} "
              f"{median[name] * batch_sizes[name]:11.0f}")
    if "clip" in median and "minimal JAX clip" in median:
        print(f"clip / minimal JAX clip (steps/s): {median['clip'] / median['minimal JAX clip']:.2f}")
        trainer, source, inputs = pipeline
        iterator = train.training_iterator(trainer.config, source, inputs)
        trainer.global_batch(next(iterator))
        start = time.perf_counter()
        for _ in range(PIPELINE_BATCHES):
            jax.block_until_ready(trainer.global_batch(next(iterator)))
        per_batch = (time.perf_counter() - start) / PIPELINE_BATCHES
        print(f"pipeline (clip's batches, noise and host-to-device copy): "
              f"{trainer.config.data.batch_size / per_batch:.0f} examples/s, {1 / per_batch / median['clip']:.1f}x "
              f"what the clip step consumes")
    for name in median:
        if name not in ("clip", "minimal JAX clip") and "clip" in median and not name.endswith("(no head)"):
            print(f"{name} / clip (step time): {median['clip'] / median[name]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
