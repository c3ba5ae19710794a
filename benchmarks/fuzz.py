"""Fuzz what users hand parasim, by the thousand: mutated scenario files through the loader (and
the simulator, for a share of those it accepts), mutated Result files through ``parasim
report``, and mutated data files through the executor's loaders. Each input ends as one of:

- clean: the one-line error a user should see (a ``UserError`` / ``ReportError`` naming the file)
- accepted: read (and simulated or drawn) without error
- traceback: any other exception (a bug)
- bad message: a clean error that is not one line or does not name the file
- over time: more than ``LIMIT_S`` seconds (a hang, as far as a user can tell)

    python benchmarks/fuzz.py [--scenarios 10000] [--results 1000] [--data 1000] [--seed 0]

Mutations (seeded, so a run can be repeated): on the parsed file, a value replaced by another
of any type or an extreme (0, -1, 2**31, 1e308, NaN, a long string, a deep list), a key deleted,
renamed or duplicated, a list item duplicated; on the bytes, a byte flipped, a NUL, U+FFFE or
invalid UTF-8 inserted, the file cut short, an alias bomb, a list used as a key, a thousand
levels of nesting. The shipped scenarios are the seeds. The first failing inputs of each kind
are printed with their error, and kept under ``--keep DIR`` when given.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import random
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LIMIT_S = 30.0  # an input taking longer than this is counted as over time
SIMULATE_SHARE = 0.1  # share of accepted scenario mutants also simulated
# a mutant may ask for real work (``iterations: 64`` of GPT-3 on 64 GPUs runs over a minute,
# as it should): the simulator's own limit on a run's estimated events is lowered to what
# takes a few seconds, so such runs end as its clean refusal and the fuzzing stays about
# robustness, not throughput
FUZZ_EVENTS = 200_000
OUTCOMES = ("clean", "accepted", "traceback", "bad message", "over time")


class OverTime(Exception):
    pass


def _alarm(signum, frame):  # noqa: ANN001, ANN202, ARG001
    raise OverTime


def timed_out(seconds: float) -> contextlib.AbstractContextManager:
    @contextlib.contextmanager
    def guard():  # noqa: ANN202
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return guard()


# ---- mutations ---------------------------------------------------------------------------------

EXTREMES = [0, -1, 1, 2**31, 2**63, -(2**63), 1e308, -1e308, 1e-320, float("nan"),
            float("inf"), "", "x" * 10_000, None, True, [], {}, [[[[[[[]]]]]]], "ring",
            "K40", "1e6", 3.5, "∞"]


def paths(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value, down to 20 levels (a mutant may hold a list 5,000 deep)."""
    out = [prefix]
    if len(prefix) >= 20:
        return out
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


def random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(8 if depth < 2 else 5)
    if kind == 0:
        return rng.choice(EXTREMES)
    if kind == 1:
        return rng.randint(-10, 10**rng.randint(1, 12))
    if kind == 2:
        return rng.uniform(-1e3, 1e3) * 10 ** rng.randint(-10, 10)
    if kind == 3:
        return "".join(rng.choice("abcxyz_-.0129 \t:[]{}&*!|>") for _ in range(rng.randint(0,
                                                                                           12)))
    if kind == 4:
        return rng.choice([True, False, None])
    if kind == 5:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == 6:
        return {rng.choice([1, 2.5, True, None, ""]) if rng.random() < 0.1
                else f"k{rng.randint(0, 9)}":
                random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    nested: object = 1
    for _ in range(rng.choice([10, 100, 1000])):
        nested = [nested]
    return nested


def near(rng: random.Random, old: object) -> object:
    """A plausible value of the same kind (most such files load and run)."""
    if isinstance(old, bool):
        return not old
    if isinstance(old, int):
        return rng.choice([old - 1, old + 1, old * 2, old // 2, 0, 3, 7, 64, 1000])
    if isinstance(old, float):
        return rng.choice([old * 2, old / 2, 0.0, old * 1e6])
    if isinstance(old, str):
        return rng.choice([old + "x", old.upper(), old[:-1], "ring", "1f1b", "K40", "shm",
                           "adam", "fp16", "data_parallel", "pipeline", "tensor"])
    return random_value(rng)


def mutate_data(rng: random.Random, data: object) -> object:
    data = copy.deepcopy(data)
    for _ in range(rng.randint(1, 3)):
        all_paths = paths(data)[1:]
        if not all_paths:
            return random_value(rng)
        path = rng.choice(all_paths)
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        action = rng.choice(["near", "near", "replace", "delete", "rename", "duplicate"])
        if action == "near":
            parent[key] = near(rng, parent[key])
        elif action == "replace":
            parent[key] = random_value(rng)
        elif action == "delete":
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            name = str(key)
            i = rng.randrange(len(name) + 1)
            parent[name[:i] + rng.choice("abs_") + name[i + 1:]] = parent.pop(key)
        elif isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
    return data


def bomb(levels: int) -> str:
    lines = ['b0: &b0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\ndescription: *b{levels}\n"


def mutate_bytes(rng: random.Random, raw: bytes) -> bytes:
    action = rng.randrange(9)
    i = rng.randrange(len(raw) + 1)
    if action == 0:  # flip a byte
        b = bytearray(raw)
        if b:
            b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
        return bytes(b)
    if action == 1:
        return raw[:i] + rng.choice([b"\x00", "\ufffe".encode(), b"\xff\xfe", b"\xc3"]) + raw[i:]
    if action == 2:
        return raw[:i]
    if action == 3:
        return raw + bomb(rng.randint(3, 12)).encode()
    if action == 4:
        return raw + b"\n? [a, b]\n: 1\n"
    if action == 5:
        depth = rng.choice([100, 1000, 5000])
        return raw + b"\nextra: " + b"[" * depth + b"]" * depth + b"\n"
    if action == 6:
        return raw[:i] + raw[i:][:rng.randint(0, 40)] * rng.randint(2, 50) + raw[i:]
    if action == 7:
        return raw + b"\nseed: " + b"9" * rng.choice([20, 5000]) + b"\n"
    return raw.replace(b": ", b": &x ", 1) + b"\nloop: &l [*l]\n"


# ---- running one input -------------------------------------------------------------------------

def run_one(check: Callable[[], None], path: Path, user_errors: tuple) -> tuple[str, str]:
    start = time.monotonic()
    try:
        with timed_out(LIMIT_S):
            check()
    except OverTime:
        return "over time", f"over {LIMIT_S:g} s"
    except user_errors as e:
        text = str(e)
        if "\n" in text or (path.name not in text and "strategy" not in text):
            return "bad message", text[:300]
        return "clean", ""
    except RecursionError:
        return "traceback", "RecursionError"
    except Exception:  # noqa: BLE001 - counting every other exception is the point
        return "traceback", traceback.format_exc(limit=-3)[-600:]
    if time.monotonic() - start > LIMIT_S:
        return "over time", "finished, but late"
    return "accepted", ""


def fuzz_scenarios(n: int, rng: random.Random, folder: Path, report: Callable) -> Counter:
    from simulator import limits
    from simulator.errors import UserError
    from simulator.predict import simulate_scenario
    from simulator.scenario import load_scenario

    limits.EVENTS = FUZZ_EVENTS
    seeds = sorted((ROOT / "scenarios").glob("*.yaml"))
    texts = [p.read_bytes() for p in seeds]
    parsed = [yaml.safe_load(t) for t in texts]
    counts: Counter = Counter()
    for k in range(n):
        j = rng.randrange(len(seeds))
        if rng.random() < 0.6:
            try:
                raw = yaml.safe_dump(mutate_data(rng, parsed[j]), allow_unicode=True).encode()
            except (yaml.YAMLError, RecursionError, ValueError):  # a value YAML cannot write
                raw = mutate_bytes(rng, texts[j])
        else:
            raw = mutate_bytes(rng, texts[j])
        path = folder / f"scenario{k}.yaml"
        path.write_bytes(raw)
        simulate = rng.random() < SIMULATE_SHARE

        def check(path: Path = path, simulate: bool = simulate) -> None:
            scenario = load_scenario(path)
            if simulate and scenario.cluster.device_count <= 64:
                with contextlib.redirect_stdout(io.StringIO()):
                    simulate_scenario(scenario)

        outcome, why = run_one(check, path, (UserError,))
        counts[outcome] += 1
        report("scenario", path, outcome, why)
        if outcome in ("accepted", "clean"):
            path.unlink()
    return counts


def fuzz_results(n: int, rng: random.Random, folder: Path, report: Callable) -> Counter:
    from parasim.cli import main
    from simulator.predict import simulate_scenario
    from simulator.scenario import load_scenario

    base = [simulate_scenario(load_scenario(ROOT / "scenarios" / name))[0]
            for name in ("executor_mlp.yaml", "downpour_vs_sync.yaml")]
    for result in base:
        result["scenario"].pop("yaml", None)
    counts: Counter = Counter()
    out = folder / "page.html"
    for k in range(n):
        result = base[rng.randrange(len(base))]
        if rng.random() < 0.7:
            try:
                raw = json.dumps(mutate_data(rng, result)).encode()
            except (RecursionError, ValueError):  # a value JSON cannot write
                raw = mutate_bytes(rng, json.dumps(result).encode())
        else:
            raw = mutate_bytes(rng, json.dumps(result).encode())
        path = folder / f"result{k}.json"
        path.write_bytes(raw)

        def check(path: Path = path) -> None:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(["report", str(path), "-o", str(out), "--force"])
            if code == 2:
                raise _Clean(err.getvalue().strip())
            if code != 0:
                raise RuntimeError(f"exit {code}: {err.getvalue()[-300:]}")

        outcome, why = run_one(check, path, (_Clean,))
        counts[outcome] += 1
        report("result", path, outcome, why)
        if outcome in ("accepted", "clean"):
            path.unlink()
    return counts


class _Clean(Exception):
    """``parasim report`` answered exit 2 with its message (checked like any clean error)."""


def fuzz_data(n: int, rng: random.Random, folder: Path, report: Callable) -> Counter:
    import numpy as np

    from executor.data import DataError
    from executor.loaders import load_cifar10, load_idx, load_npz, load_text

    images = struct.pack(">IIII", 0x803, 4, 8, 8) + bytes(rng.randrange(256) for _ in range(256))
    labels = struct.pack(">II", 0x801, 4) + bytes([1, 2, 3, 4])
    cifar = b"".join(bytes([k]) + bytes(3072) for k in range(3))
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((4, 1, 8, 8), np.float32), y=np.arange(4))
    seeds = {"idx": images, "cifar": cifar, "npz": buffer.getvalue(),
             "text": b"In the beginning was the Word.\n" * 10}
    counts: Counter = Counter()
    for k in range(n):
        kind = rng.choice(sorted(seeds))
        raw = seeds[kind]
        for _ in range(rng.randint(1, 3)):
            raw = mutate_bytes(rng, raw)
        if rng.random() < 0.1:
            import gzip

            raw = gzip.compress(raw)
        path = folder / f"data{k}.{kind}"
        path.write_bytes(raw)
        other = folder / f"labels{k}.idx"
        other.write_bytes(labels)
        read = {"idx": lambda p=path, o=other: load_idx(p, o),
                "cifar": lambda p=path: load_cifar10(p),
                "npz": lambda p=path: load_npz(p),
                "text": lambda p=path: load_text(p, 8)}[kind]
        outcome, why = run_one(read, path, (DataError,))
        counts[outcome] += 1
        report("data", path, outcome, why)
        other.unlink()
        if outcome in ("accepted", "clean"):
            path.unlink()
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", type=int, default=10_000)
    ap.add_argument("--results", type=int, default=1_000)
    ap.add_argument("--data", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="a folder to keep failing inputs in")
    args = ap.parse_args()
    shown: Counter = Counter()

    def report(kind: str, path: Path, outcome: str, why: str) -> None:
        if outcome in ("clean", "accepted"):
            return
        if shown[kind, outcome] < 3:
            print(f"  {kind} {outcome}: {path.name}: {why.strip().splitlines()[-1][:200]}")
        shown[kind, outcome] += 1
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            (args.keep / path.name).write_bytes(path.read_bytes())

    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for kind, n, fn in (("scenario", args.scenarios, fuzz_scenarios),
                            ("result", args.results, fuzz_results),
                            ("data", args.data, fuzz_data)):
            if n:
                cpu = time.process_time()
                counts = fn(n, rng, folder, report)
                rows.append((kind, n, counts, time.process_time() - cpu))
    print(f"{'inputs':<10}{'n':>7}" + "".join(f"{o:>13}" for o in OUTCOMES) + f"{'cpu_s':>9}")
    for kind, n, counts, cpu in rows:
        print(f"{kind:<10}{n:>7}" + "".join(f"{counts[o]:>13}" for o in OUTCOMES)
              + f"{cpu:>9.1f}")
    bad = sum(c[o] for _, _, c, _ in rows for o in ("traceback", "bad message", "over time"))
    print("PASS: no traceback, no hang, every error one line naming its file" if not bad
          else f"FAIL: {bad} input(s) ended badly")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
