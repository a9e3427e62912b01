"""The benchmark harness's timing loop: every variant timed once per round, in a shuffled order
that only the seed decides (so distributed ranks agree), or in the given order."""
from scalenn.bench import harness


def _record(names):
    calls = []
    variants = {n: (lambda n=n: calls.append(n)) for n in names}
    return calls, variants


def test_rounds_shuffle_the_order_reproducibly():
    names = [f"v{i}" for i in range(6)]
    calls, variants = _record(names)
    times = harness.interleaved_times(variants, rounds=8, calls_per_round=2, warmup=0)
    assert set(times) == set(names) and all(len(t) == 8 and min(t) >= 0 for t in times.values())
    rounds = [calls[i:i + 12:2] for i in range(0, len(calls), 12)]
    assert all(sorted(r) == names for r in rounds)  # each variant once per round, 2 calls each
    assert all(calls[i] == calls[i + 1] for i in range(0, len(calls), 2))
    assert len({tuple(r) for r in rounds}) > 1  # the order changes between rounds
    again, variants = _record(names)
    harness.interleaved_times(variants, rounds=8, calls_per_round=2, warmup=0)
    assert again == calls  # same seed and names: same order


def test_fixed_order_when_asked():
    names = ["c", "a", "b"]
    calls, variants = _record(names)
    harness.interleaved_times(variants, rounds=3, calls_per_round=1, warmup=0, order_seed=None)
    assert calls == names * 3


def test_auto_counts_follow_each_variant_and_settle_first():
    import time
    counts = {"fast": 0, "slow": 0}

    def call(name, seconds):
        counts[name] += 1
        time.sleep(seconds)

    variants = {"fast": lambda: call("fast", 0.0005), "slow": lambda: call("slow", 0.004)}
    times = harness.interleaved_times(variants, rounds=2, warmup=0, target_round_s=0.01,
                                      settle_s=0.004)
    assert all(len(t) == 2 for t in times.values())
    # Each variant runs about target_round_s per round (plus its settling calls), so the fast
    # one makes several times as many calls; sleep only ever overshoots, so this is loose.
    assert counts["fast"] >= 3 * counts["slow"]
    assert counts["slow"] >= 2 * (1 + 1)  # per round at least one settling and one timed call
