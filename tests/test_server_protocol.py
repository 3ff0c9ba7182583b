"""The server's protocol class: pygls's bookkeeping of running handlers stays bounded."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future

from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol

from mose_lsp.config import Settings
from mose_lsp.server import create_server


async def _run_builtin_style(protocol: LanguageServerProtocol, n: int) -> list[object]:
    """Run ``n`` handlers the way pygls runs the user's side of a built-in method (a
    generator that yields the user's async handler), as every notification and
    workspace/executeCommand goes; return their results."""

    async def user_handler(i: int) -> dict[str, str]:
        await asyncio.sleep(0)
        return {"result": f"search response {i} " * 50}

    def builtin(i: int):
        value = yield user_handler, (i,), None
        return value

    results = []
    for i in range(n):
        done: Future = Future()
        protocol._run_generator(None, gen=builtin(i), result_future=done)
        while not done.done():
            await asyncio.sleep(0)
        results.append(done.result())
    await asyncio.sleep(0)  # let done-callbacks run
    return results


def test_finished_handlers_are_forgotten():
    server = create_server(Settings())
    results = asyncio.run(_run_builtin_style(server.protocol, 50))
    assert results[7] == {"result": "search response 7 " * 50}  # handlers really ran
    assert server.protocol._request_futures == {}


def test_plain_pygls_keeps_them_which_is_why_the_override_exists():
    # If this starts failing, pygls fixed the leak and MoseProtocol._execute_handler's
    # override can go.
    server = LanguageServer("plain", "0", protocol_cls=LanguageServerProtocol)
    asyncio.run(_run_builtin_style(server.protocol, 50))
    assert len(server.protocol._request_futures) == 50
