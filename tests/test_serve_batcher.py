"""The dynamic batcher on its own: every item gets its own result, batches respect the cap,
each dispatch reason happens when it should, cancelled items never run, errors reach every
request of their batch."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.serve.batcher import DynamicBatcher


class Recorder:
    """``run_batch`` that doubles its items and remembers each batch."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate

    def __call__(self, items: list[int]) -> list[int]:
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(list(items))
        return [2 * x for x in items]


def run(coro):
    return asyncio.run(coro)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), max_batch=st.integers(1, 9),
       gaps=st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.003]), min_size=40, max_size=40))
def test_every_item_gets_its_own_result(n, max_batch, gaps):
    rec = Recorder()

    async def main():
        b = DynamicBatcher(rec, max_batch=max_batch, max_wait_s=0.002)
        b.start()

        async def one(i):
            await asyncio.sleep(gaps[i] * i / 4)
            return await b.submit(i)

        outs = await asyncio.gather(*(one(i) for i in range(n)))
        await b.stop()
        return outs

    outs = run(main())
    assert [r for r, _ in outs] == [2 * i for i in range(n)]
    assert all(1 <= len(batch) <= max_batch for batch in rec.batches)
    assert sorted(x for batch in rec.batches for x in batch) == list(range(n))
    for (_, info), i in zip(outs, range(n), strict=True):
        assert info.size == len(next(b for b in rec.batches if i in b))
        assert info.queue_s >= 0


def test_full_batches_form_while_the_model_is_busy():
    gate = threading.Event()
    rec = Recorder(gate)

    async def main():
        b = DynamicBatcher(rec, max_batch=4, max_wait_s=10.0)
        b.start()
        first = asyncio.ensure_future(b.submit(0))  # runs alone (idle), blocks on the gate
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(b.submit(i)) for i in range(1, 9)]
        await asyncio.sleep(0.05)
        gate.set()
        outs = await asyncio.gather(first, *rest)
        await b.stop()
        return outs, dict(b.reasons)

    outs, reasons = run(main())
    assert rec.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert reasons == {"idle": 1, "full": 2}
    assert [info.reason for _, info in outs] == ["idle"] + ["full"] * 8


def test_waits_for_expected_items_then_times_out():
    rec = Recorder()

    async def main():
        b = DynamicBatcher(rec, max_batch=8, max_wait_s=0.05)
        b.start()
        b.expect()  # an item still being decoded: the batch waits for it, up to max_wait
        a = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.01)
        assert not a.done()
        out = await a
        b.arrived()
        await b.stop()
        return out

    (_, info) = run(main())
    assert info.reason == "timeout" and info.size == 1
    assert info.queue_s >= 0.05


def test_expected_item_joins_the_batch_when_it_arrives():
    rec = Recorder()

    async def main():
        b = DynamicBatcher(rec, max_batch=8, max_wait_s=5.0)
        b.start()
        b.expect()
        a = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.02)
        c = asyncio.ensure_future(b.submit(2))
        await asyncio.sleep(0)
        b.arrived()  # nothing else on its way: dispatch now, not after 5 s
        outs = await asyncio.gather(a, c)
        await b.stop()
        return outs

    outs = run(main())
    assert rec.batches == [[1, 2]]
    assert {info.reason for _, info in outs} == {"idle"}


def test_cancelled_items_never_run():
    gate = threading.Event()
    rec = Recorder(gate)

    async def main():
        b = DynamicBatcher(rec, max_batch=8, max_wait_s=0.0)
        b.start()
        first = asyncio.ensure_future(b.submit(0))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(b.submit(1))
        kept = asyncio.ensure_future(b.submit(2))
        await asyncio.sleep(0.01)
        assert b.queue_depth == 2
        doomed.cancel()
        await asyncio.sleep(0)
        assert b.queue_depth == 1
        gate.set()
        outs = await asyncio.gather(first, kept)
        await b.stop()
        return outs

    outs = run(main())
    assert [r for r, _ in outs] == [0, 4]
    assert rec.batches == [[0], [2]]


def test_an_error_reaches_every_request_of_its_batch_and_the_next_batch_runs():
    calls = []

    def flaky(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise ValueError("model failed")
        return items

    async def main():
        b = DynamicBatcher(flaky, max_batch=2, max_wait_s=1.0)
        b.start()
        outs = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
        after = await b.submit(3)
        await b.stop()
        return outs, after

    outs, after = run(main())
    assert all(isinstance(o, ValueError) for o in outs)
    assert after[0] == 3


def test_wrong_result_count_is_an_error():
    async def main():
        b = DynamicBatcher(lambda xs: xs[:-1], max_batch=4, max_wait_s=0.0)
        b.start()
        try:
            with pytest.raises(RuntimeError, match="2 results for 3"):
                await asyncio.gather(*(b.submit(i) for i in range(3)))
        finally:
            await b.stop()

    run(main())


def test_submit_before_start_is_an_error():
    async def main():
        with pytest.raises(RuntimeError, match="not started"):
            await DynamicBatcher(lambda xs: xs).submit(1)

    run(main())


def test_a_busy_service_waits_for_the_clients_it_just_answered():
    rec = Recorder()

    async def main():
        b = DynamicBatcher(rec, max_batch=8, max_wait_s=0.2)
        b.start()
        await asyncio.gather(*(b.submit(i) for i in (0, 1)))  # a batch of two: busy
        late = asyncio.ensure_future(b.submit(2))
        await asyncio.sleep(0.05)  # the other client comes back within max_wait
        other = asyncio.ensure_future(b.submit(3))
        outs = await asyncio.gather(late, other)
        lone = await b.submit(4)  # after a batch of two, a lone request waits it out
        alone = await b.submit(5)  # ... but the service is quiet again: no wait
        await b.stop()
        return outs, lone, alone

    (a, c), lone, alone = run(main())
    assert rec.batches[-3:] == [[2, 3], [4], [5]]
    assert a[1].size == 2 and a[1].reason == "timeout"
    assert lone[1].reason == "timeout" and alone[1].reason == "idle"
