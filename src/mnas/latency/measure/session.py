"""The timing routine inside one measuring process, shared by whole models and table packs.

Items (candidates, or packs of table units) and the reference network run in alternation, one
inference each: ref, item 1, ref, item 2, ref, ... round after round, so every item call sits
between two reference calls. A slow period of the machine (a neighbour on the host, a throttled
phone) slows both alike, so the ratio item / mean(reference before, reference after) cancels it;
under a linear drift the mean of the two neighbours cancels it exactly.

Warm-up: >= `warmup_iters` rounds and >= `warmup_s`. Timed: `iters` rounds. Every call whose
process CPU time / wall time is below `preempt_ratio` is flagged (the process was preempted); a
pair is clean when the item call and both reference calls are. While more than `max_flagged` of
an attempt is flagged and fewer than `iters` clean pairs exist, another attempt runs (at most
`retries` more). The statistics use the clean pairs (all of them when fewer than `min_clean`
are clean: then the flagged fraction, which is always reported, says the number is unreliable).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mnas.latency.backends.base import Runner
from mnas.latency.measure.protocol import DEFAULT_PROTOCOL, Protocol
from mnas.latency.measure.sample import ProcessSample

REF = -1


@dataclass
class _Call:
    who: int  # item index, or REF
    ms: float
    flagged: bool


def _time_one(runner: Runner, protocol: Protocol) -> tuple[float, bool]:
    w0, c0 = time.perf_counter_ns(), time.process_time_ns()
    device_ms = runner.device_timer() if runner.device_timer else None
    if device_ms is None:
        runner.run()
    w1, c1 = time.perf_counter_ns(), time.process_time_ns()
    dw = max(w1 - w0, 1)
    return (device_ms if device_ms is not None else dw / 1e6), (c1 - c0) / dw < protocol.preempt_ratio


def time_session(items: Sequence[Runner], protocol: Protocol = DEFAULT_PROTOCOL,
                 reference: Runner | None = None) -> list[list[ProcessSample]]:
    """Per item, one ProcessSample per part (one for a whole model), with `relative` set when a
    reference runs in alternation."""
    if not items:
        return []
    order: list[tuple[int, Runner]] = []
    for i, r in enumerate(items):
        order.append((i, r))
        if reference is not None:
            order.append((REF, reference))
    # warm-up: whole rounds, so every item (and the reference) is warm
    t_end = time.perf_counter() + protocol.warmup_s
    warm = 0
    while warm < protocol.warmup_iters or time.perf_counter() < t_end:
        if reference is not None:
            reference.run()
        for _, r in order:
            r.run()
        warm += 1
    calls: list[_Call] = []
    attempts = 0
    while attempts <= protocol.retries:
        attempts += 1
        start = len(calls)
        if reference is not None:
            calls.append(_Call(REF, *_time_one(reference, protocol)))
        for _ in range(protocol.iters):
            for who, r in order:
                calls.append(_Call(who, *_time_one(r, protocol)))
        if all(_settled(calls, start, i, protocol) for i in range(len(items))):
            break
    out = [_samples(items[i], i, calls, warm, attempts, protocol, reference is not None) for i in range(len(items))]
    finished = time.time()  # one session, one time: the items were timed together
    for item in out:
        for s in item:
            s.finished_at = finished
    return out


def _pairs(calls: list[_Call], who: int, since: int = 0) -> list[tuple[int, bool]]:
    """(index in `calls`, flagged) of every call of `who`, a neighbouring reference flag included."""
    out = []
    for g in range(since, len(calls)):
        c = calls[g]
        if c.who != who:
            continue
        flagged = c.flagged
        for n in (g - 1, g + 1):
            if 0 <= n < len(calls) and calls[n].who == REF:
                flagged = flagged or calls[n].flagged
        out.append((g, flagged))
    return out


def _settled(calls: list[_Call], start: int, who: int, protocol: Protocol) -> bool:
    attempt = _pairs(calls, who, start)
    flagged = sum(f for _, f in attempt) / max(len(attempt), 1)
    clean = sum(not f for _, f in _pairs(calls, who))
    return flagged <= protocol.max_flagged or clean >= protocol.iters


def _samples(runner: Runner, who: int, calls: list[_Call], warm: int, attempts: int, protocol: Protocol,
             relative: bool) -> list[ProcessSample]:
    pairs = _pairs(calls, who)
    clean = [g for g, f in pairs if not f]
    use = clean if len(clean) >= protocol.min_clean else [g for g, _ in pairs]
    flagged = 1 - len(clean) / len(pairs)
    if runner.part_times is not None:  # per-part times of every call, warm-up first
        per_call = runner.part_times()
        if len(per_call) != warm + len(pairs):
            raise RuntimeError(f"the pack reported {len(per_call)} calls, expected {warm + len(pairs)}")
        timed = dict(zip((g for g, _ in pairs), per_call[warm:], strict=True))
        part_ms = [[timed[g][p] for g in use] for p in range(runner.parts)]
    else:
        part_ms = [[calls[g].ms for g in use]]
    ref_ms = None
    ref_mean: list[float] = []
    if relative:
        ref_ms = statistics.median(c.ms for c in calls if c.who == REF and not c.flagged) \
            if any(c.who == REF and not c.flagged for c in calls) else statistics.median(c.ms for c in calls if c.who == REF)
        ref_mean = [(calls[g - 1].ms + calls[g + 1].ms) / 2 for g in use]
    out = []
    for times in part_ms:
        ratios = [t / r for t, r in zip(times, ref_mean, strict=True)] if relative else None
        s = ProcessSample.from_times(times, flagged, attempts, ratios=ratios, reference_ms=ref_ms)
        s.runs = len(pairs)
        out.append(s)
    return out
