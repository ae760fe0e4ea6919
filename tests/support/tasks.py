"""Task bookkeeping shared by the loopback servers: nothing may outlive ``stop``.

Where this sits in the data flow: every server in ``tests.support`` handles each
connection in its own task; ``stop`` cancels and awaits them all, so that a test
ends with no lingering task and no unclosed socket (CONTRIBUTING.md 13).
"""

from __future__ import annotations

import asyncio


async def cancel_all(tasks: set[asyncio.Task[None]]) -> None:
    """Cancel and await every task in *tasks*, including ones accepted but not yet started."""
    await asyncio.sleep(0)  # a task created by an accept registers itself on its first step
    while tasks:
        pending = list(tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        tasks.difference_update(pending)
