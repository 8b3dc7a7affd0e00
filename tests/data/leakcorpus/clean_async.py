"""Clean async tests: event loops made and closed, tasks awaited or cancelled."""

import asyncio

import pytest

pytestmark = pytest.mark.no_leaks


def test_asyncio_run():
    async def main():
        await asyncio.sleep(0)
        return 42

    assert asyncio.run(main()) == 42


def test_asyncio_gather():
    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    async def main():
        return await asyncio.gather(*(double(i) for i in range(10)))

    assert asyncio.run(main())[-1] == 18


async def test_plain_async_test():
    await asyncio.sleep(0)


async def test_plain_async_task_awaited():
    task = asyncio.create_task(asyncio.sleep(0, result=3))
    assert await task == 3


async def test_plain_async_task_cancelled():
    task = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_plain_async_queue():
    queue: asyncio.Queue[int] = asyncio.Queue()
    await queue.put(1)
    assert await queue.get() == 1


@pytest.mark.anyio
async def test_anyio_sleep():
    import anyio

    await anyio.sleep(0)


@pytest.mark.anyio
async def test_anyio_task_group():
    import anyio

    results = []

    async def work(n):
        await anyio.sleep(0)
        results.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(5):
            tg.start_soon(work, n)
    assert sorted(results) == [0, 1, 2, 3, 4]


@pytest.fixture
def anyio_backend():
    return "asyncio"
