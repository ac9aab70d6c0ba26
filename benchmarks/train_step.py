"""Speed of the compiled training step of the default configs, measured in one run:

    python benchmarks/train_step.py [--configs clip,gram,pmrl] [--steps 30] [--smoke]

For each config: steps/s and examples/s of the jitted step on a fixed global batch (input
already on the devices), the share of the step spent in the loss (the compiled loss
forward + backward on embeddings of the same shape, divided by the step time), and the
grain pipeline's examples/s (batches of the same config drawn back to back, transforms
and the host-to-device copy included), as a ratio to what the step consumes (issue 3's
target: at least 5x). Times are the median of interleaved repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from arguments import names_from, positive_int  # noqa: E402
from pmrl_jax import train  # noqa: E402
from pmrl_jax.configs import load_config_file  # noqa: E402
from pmrl_jax.data.pipeline import feature_statistics  # noqa: E402
from pmrl_jax.objectives import objective_fn  # noqa: E402
from pmrl_jax.resolve import prepare  # noqa: E402
from pmrl_jax.trainer import make_trainer  # noqa: E402

CONFIG_NAMES = sorted(path.stem for path in (ROOT / "configs").glob("*.py"))


PIPELINE_BATCHES = 10


def load_config(name: str, smoke: bool):
    return load_config_file(f"{ROOT / 'configs' / name}.py{':smoke' if smoke else ''}")


def seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, config, repeats: int) -> None:
    prepared = prepare(config)
    config, source = prepared.config, prepared.train
    inputs = feature_statistics(source, config.data.modalities)
    trainer = make_trainer(config, prepared.shapes, statistics=inputs)
    iterator = train.training_iterator(config, source, inputs)
    loss_name = config.loss.name  # the final stage: the method's own objective
    step = trainer.step_fn(loss_name)
    batch = trainer.global_batch(next(iterator))
    key = jax.random.key(0)
    k, d, b = len(config.data.modalities), config.model.embed_dim, config.data.batch_size
    loss_fn = objective_fn(loss_name, config)
    loss_grad = jax.jit(jax.grad(lambda z: loss_fn(z, 0.07)), in_shardings=trainer.batch_sharding)
    z = jax.device_put(jax.random.normal(key, (b, k, d)), trainer.batch_sharding)
    holder = {"state": trainer.init_state()}

    def run_step():
        holder["state"], metrics = step(holder["state"], batch, np.int32(1), key)
        return metrics["loss"]

    def run_loss():
        return loss_grad(z)

    def drain_pipeline():
        # Back to back, so that prefetching cannot hide the producer's cost behind a step.
        for _ in range(PIPELINE_BATCHES):
            trainer.global_batch(next(iterator))

    with jax.set_mesh(trainer.mesh):
        run_step(), run_loss(), drain_pipeline()  # compile, warm up the pipeline's threads
        step_times, loss_times, data_times = [], [], []
        for _ in range(repeats):  # interleaved, so that machine noise hits all three alike
            step_times.append(seconds(run_step, 1))
            loss_times.append(seconds(run_loss, 1))
            data_times.append(seconds(drain_pipeline, 1) / PIPELINE_BATCHES)
    step_s, loss_s, data_s = (statistics.median(t) for t in (step_times, loss_times, data_times))
    print(f"{name:8s} {loss_name:7s} {b:5d} {1 / step_s:8.2f} {b / step_s:11.0f} {loss_s / step_s:10.1%} "
          f"{b / data_s:13.0f} {step_s / data_s:12.1f}x", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=names_from(CONFIG_NAMES), default="clip,gram,pmrl")
    parser.add_argument("--steps", type=positive_int, default=30, help="timed repeats of each measurement")
    parser.add_argument("--smoke", action="store_true", help="the configs' :smoke variants (for the test suite)")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} device(s)")
    print(f"{'config':8s} {'loss':7s} {'batch':>5s} {'steps/s':>8s} {'examples/s':>11s} {'loss share':>10s} "
          f"{'pipeline ex/s':>13s} {'pipeline/step':>13s}")
    for name in args.configs:
        measure(name, load_config(name, args.smoke), args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
