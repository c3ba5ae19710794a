"""A rank's program analysed once for the engine (``runner.Engine``): its ops per stream, the
ops another stream waits for, the parameter-server calls' order, and each stream cut into the
steps it plays (a run of kernels, with folded collectives, ``fold``; or one op)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from simulator.plan import COMM, COMPUTE, KERNEL_OPS, Op, PSPull, PSPush, Recv, Send

KERNELS, FOLDED, ONE = "kernels", "folded", "one"  # what a step of a stream plays (``_runs``)
# non-blocking transfers: each runs as soon as its dependencies are done (MPI_Isend-like), so a
# worker pushes to / pulls from every parameter-server shard at once
P2P_OPS = (Send, Recv, PSPush, PSPull)


@dataclass
class Program:
    """A rank program analysed once: ops per stream and which ops other streams wait for."""

    streams: dict[str, list[Op]]
    p2p: list[Op]
    needed: set[int]
    cross_deps: dict[int, tuple[int, ...]]  # the deps on other streams, of ops that have some
    # a parameter-server op -> the one before it: a rank's pushes and pulls are blocking calls
    # of its main thread, one after another in program order
    ps_after: dict[int, int]

    # collectives played inside the compute stream's runs of kernels (``fold``)
    folded: frozenset[int] = frozenset()
    runs: dict[str, list[tuple]] = field(default_factory=dict)  # per stream (``_runs``)

    @staticmethod
    def of(ops: tuple[Op, ...], fold: dict[int, int] | None = None) -> Program:
        """``fold``: collectives to play in the compute stream, each after the compute op it
        names (``fold.fold_points``)."""
        fold = fold or {}
        p2p_types = set(P2P_OPS)
        stream_of = {op.id: ("p2p" if type(op) in p2p_types
                             else COMPUTE if op.id in fold else op.stream) for op in ops}
        after = {x: c for c, x in fold.items()}
        # plans number ops by their place in the program; look them up so where that holds
        by_id = ({c: ops[c] for c in fold} if all(c < len(ops) and ops[c].id == c for c in fold)
                 else {op.id: op for op in ops if op.id in fold})
        streams: dict[str, list[Op]] = defaultdict(list)
        p2p = []
        needed: set[int] = set()
        cross: dict[int, tuple[int, ...]] = {}
        ps_after: dict[int, int] = {}
        last_ps = None
        for op in ops:
            i = op.id
            s = stream_of[i]
            if s == "p2p":
                p2p.append(op)
                cd = op.deps
                if type(op) is PSPush or type(op) is PSPull:
                    if last_ps is not None:
                        ps_after[i] = last_ps
                        needed.add(last_ps)
                    last_ps = i
            else:
                if i not in fold:
                    streams[s].append(op)
                if i in after:
                    streams[COMPUTE].append(by_id[after[i]])
                deps = op.deps
                if not deps:
                    continue
                if len(deps) == 1:
                    if stream_of[deps[0]] == s:
                        continue
                    cd = deps
                else:
                    cd = tuple(d for d in deps if stream_of[d] != s)
            if cd:
                cross[i] = cd  # (only ops that wait for another stream)
                needed.update(cd)
        if fold:
            # the comm stream's first op that does not fold waited for the last that does
            last = next(reversed(fold))  # in the comm stream's order
            rest = streams.get(COMM)
            if rest:
                cross[rest[0].id] = cross.get(rest[0].id, ()) + (last,)
                needed.add(last)
            else:
                streams.pop(COMM, None)
        prog = Program(dict(streams), p2p, needed, cross, ps_after, frozenset(fold))
        prog.runs = {name: prog._runs(ops) for name, ops in prog.streams.items()}
        return prog

    def _runs(self, ops: list[Op]) -> list[tuple]:
        """A stream cut into what it plays as one step: (first, end, mode, signature, the op
        whose end another stream waits for or None). Consecutive kernels (and folded
        collectives) form one run until an op another stream waits for, or one that waits
        for another stream; the signature (the script ops a folded run was replayed from,
        ``sharding.Script``) lets the engine price a run once per micro-batch pattern."""
        needed, cross, folded = self.needed, self.cross_deps, self.folded
        kernel = set(KERNEL_OPS)
        out = []
        i, n = 0, len(ops)
        while i < n:
            op = ops[i]
            if type(op) in kernel or op.id in folded:
                j = i + 1
                has_fold = op.id in folded
                last = op.id
                if last not in needed:
                    while j < n:
                        nxt = ops[j]
                        k = nxt.id
                        f = k in folded
                        if (not f and type(nxt) not in kernel) or k in cross:
                            break
                        has_fold = has_fold or f
                        j += 1
                        last = k
                        if k in needed:
                            break
                if has_fold:
                    sig = tuple([o.__dict__.get("_t") for o in ops[i:j]])
                    out.append((i, j, FOLDED, None if None in sig else sig,
                                last if last in needed else None))
                else:
                    out.append((i, j, KERNELS, None, last if last in needed else None))
                i = j
            else:
                out.append((i, i + 1, ONE, None, op.id if op.id in needed else None))
                i += 1
        return out
