"""Where a loss's compiled forward+backward spends its time, op by op, from a profiler
trace: what to read when `benchmarks/losses.py` prints a ratio above its target.

    python benchmarks/ops.py [--loss gram] [--k 3] [--batch 1024] [--rounds 30] [--top 25]

Each row is one op of the optimised XLA program (on CPU, a fusion or a library call run
as one thunk), named as in `jax.jit(...).lower(...).compile().as_text()`, with its time
per call averaged over the profiled rounds. "product" marks an op that holds a `dot`
(YNNPACK or Eigen matrix products), "other" everything else: for GRAM, its elementwise
sweeps over [B, B], the transposes and the small per-instance work. XLA:CPU runs
independent ops at the same time on different threads, so the ops' times add up to more
than a call's wall time. The summary splits each profiled call's wall time instead: while
some product runs, while only other ops run (the elementwise work a faster matmul would
not hide), and while no op runs (launch and waits). The reference is the matmul of
`benchmarks/losses.py`, [B, d] x [d, (k-1) B], timed in the same process; the profiler
slows the calls a little, so the unprofiled best times are printed too.

Nothing is written: the trace goes to a temporary directory that is removed.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

from arguments import positive_int

LOSSES = ("gram", "pmrl")
# `%name = <shape> <opcode>(...)`, with `calls=%computation` for fusions and calls.
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+(?: \S+)*?) ([\w\-]+)\(")
CALLS = re.compile(r"calls=%([\w.\-]+)")
COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")


def program_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
    """{op name: (kind, output shape)} for every instruction of the compiled module,
    kind "product" when it is a dot or calls a computation that holds one."""
    computation_has_dot, instructions, current = {}, [], None
    for line in hlo_text.splitlines():
        header = COMPUTATION.match(line)
        if header and line.rstrip().endswith("{"):
            current = header.group(1)
            computation_has_dot.setdefault(current, False)
            continue
        match = INSTRUCTION.match(line)
        if match is None or current is None:
            continue
        name, shape, opcode = match.groups()
        if opcode == "dot":
            computation_has_dot[current] = True
        called = CALLS.search(line)
        instructions.append((name, shape, opcode, called.group(1) if called else None))
    ops = {}
    for name, shape, opcode, called in instructions:
        product = opcode == "dot" or (called is not None and computation_has_dot.get(called, False))
        ops[name] = ("product" if product else "other", shape.split("{")[0])
    return ops


def op_events(trace_dir: str, names) -> list[tuple[str, int, int]]:
    """(op name, start ns, end ns) of every trace event named as one of the program's ops."""
    import jax

    (trace_file,) = Path(trace_dir).glob("plugins/profile/*/*.xplane.pb")
    return [(event.name, event.start_ns, event.end_ns)
            for plane in jax.profiler.ProfileData.from_file(str(trace_file)).planes
            for line in plane.lines for event in line.events if event.name in names]


def covered_ns(intervals) -> int:
    """The length of the union of [start, end) intervals."""
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total, reach = total + end - start, end
        elif end > reach:
            total, reach = total + end - reach, end
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", choices=LOSSES, default="gram")
    parser.add_argument("--k", type=positive_int, default=3, help="modalities (>= 2)")
    parser.add_argument("--batch", type=positive_int, default=1024)
    parser.add_argument("--dim", type=positive_int, default=512)
    parser.add_argument("--rounds", type=positive_int, default=30, help="profiled calls, after warm-up")
    parser.add_argument("--top", type=positive_int, default=25, help="ops listed, slowest first")
    args = parser.parse_args()
    if args.k < 2:
        parser.error(f"argument --k: a loss over modalities needs k >= 2, got {args.k}")

    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from losses import best_and_median, host_description, library_loss, measure, reference_matmul

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.batch, args.k, args.dim)), jnp.float32)
    lhs = jnp.asarray(rng.normal(size=(args.batch, args.dim)), jnp.float32)
    rhs = jnp.asarray(rng.normal(size=((args.k - 1) * args.batch, args.dim)), jnp.float32)
    library = library_loss(args.loss)
    ops = program_ops(library.lower(x).compile().as_text())
    # Compiled and warm after this.
    times = best_and_median(measure({"library": (library, (x,)), "matmul": (reference_matmul, (lhs, rhs))}, args.rounds))
    with tempfile.TemporaryDirectory(prefix="pmrl_jax_ops_") as trace_dir:
        with jax.profiler.trace(trace_dir):
            start = time.perf_counter()
            for _ in range(args.rounds):
                jax.block_until_ready(library(x))
            profiled_ms = (time.perf_counter() - start) * 1e3 / args.rounds
        events = op_events(trace_dir, ops)
    if not events:
        sys.exit("ops.py: the profiler trace named none of the program's ops; nothing to report")

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {len(jax.devices())} device(s); "
          f"{args.loss} k = {args.k}, B = {args.batch}, d = {args.dim}; {args.rounds} profiled calls; "
          f"host: {host_description()}")
    print_ops(events, ops, args.rounds, args.top)
    library_ms, matmul_ms = times["library"][0] * 1e3, times["matmul"][0] * 1e3
    products = covered_ns([(a, b) for name, a, b in events if ops[name][0] == "product"]) / 1e6 / args.rounds
    anything = covered_ns([(a, b) for _, a, b in events]) / 1e6 / args.rounds
    print(f"per profiled call ({profiled_ms:.2f} ms): a product running {products:.2f} ms "
          f"({products / matmul_ms:.2f}x the matmul), only other ops {anything - products:.2f} ms "
          f"({(anything - products) / matmul_ms:.2f}x), no op {profiled_ms - anything:.2f} ms")
    print(f"unprofiled: library {library_ms:.2f} ms best ({times['library'][1] * 1e3:.2f} median), "
          f"matmul {matmul_ms:.2f} ms best: {library_ms / matmul_ms:.2f}x")


def print_ops(events, ops, rounds: int, top: int) -> None:
    """The `top` ops by time per call, then the rest as one line."""
    per_op = collections.defaultdict(lambda: [0.0, 0.0])
    for name, start_ns, end_ns in events:
        per_op[name][0] += (end_ns - start_ns) / 1e6 / rounds
        per_op[name][1] += 1 / rounds
    ranked = sorted(per_op.items(), key=lambda item: -item[1][0])
    print(f"{'op':32s} {'kind':8s} {'output':22s} {'ms/call':>8s} {'runs/call':>9s}")
    for name, (ms, runs) in ranked[:top]:
        kind, shape = ops[name]
        print(f"{name:32s} {kind:8s} {shape:22s} {ms:8.3f} {runs:9.2f}")
    if len(ranked) > top:
        print(f"... and {len(ranked) - top} more ops, {sum(ms for _, (ms, _) in ranked[top:]):.3f} ms/call in all")


if __name__ == "__main__":
    main()
