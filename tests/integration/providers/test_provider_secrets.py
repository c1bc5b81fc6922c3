"""The backend's API key travels only in the provider's auth header, and never in an error."""

from __future__ import annotations

import pytest
from provider_cases import (
    CASES,
    KEY,
    OPTS,
    Case,
    chat_body,
    collect,
    failure,
    serve,
    stream_failure,
)

from fakes import Fault, kanal_upstream, refused_url, run
from kanal.gateway.providers import CallOptions, UpstreamError

pytestmark = pytest.mark.parametrize("case", CASES, ids=str)


def test_key_only_in_the_auth_header(case: Case) -> None:
    async def main() -> None:
        async with serve(case) as (fake, up):
            await case.adapter.chat(up, chat_body(), OPTS)
            await collect(case.adapter.chat_stream(up, chat_body(), OPTS))
            fake.script(Fault.status(500))
            await failure(case.adapter.chat(up, chat_body(), OPTS))
        assert len(fake.requests) == 3
        for request in fake.requests:
            assert request.header(case.auth_header) == case.auth_value
            others = {k: v for k, v in request.headers.items() if k != case.auth_header}
            assert KEY not in repr(others)
            assert KEY not in request.path and KEY not in repr(request.query)
            assert KEY.encode() not in request.raw

    run(main())


def test_key_never_in_an_error(case: Case) -> None:
    async def main() -> list[UpstreamError]:
        errors = []
        async with serve(case) as (fake, up):
            fake.script(
                Fault.status(401, f"Incorrect API key provided: {KEY}"),
                Fault.status(400, f"bad request from key {KEY}"),
                Fault.stream_error(after=1, code=500, message=f"boom {KEY}"),
                Fault.hang(),
                Fault.reset(after=2),
                Fault.malformed_sse(after=1),
            )
            errors.append(await failure(case.adapter.chat(up, chat_body(), OPTS)))
            errors.append(await failure(case.adapter.chat(up, chat_body(), OPTS)))
            errors.append(
                (await stream_failure(case.adapter.chat_stream(up, chat_body(), OPTS)))[1]
            )
            quick = CallOptions(timeout=0.1)
            errors.append(await failure(case.adapter.chat(up, chat_body(), quick)))
            errors.append(
                (await stream_failure(case.adapter.chat_stream(up, chat_body(), OPTS)))[1]
            )
            errors.append(
                (await stream_failure(case.adapter.chat_stream(up, chat_body(), OPTS)))[1]
            )
        async with kanal_upstream(refused_url(), api_key=KEY) as up:
            errors.append(await failure(case.adapter.chat(up, chat_body(), OPTS)))
        return errors

    errors = run(main())
    assert len(errors) == 7
    for err in errors:
        for text in (err.message, str(err), repr(err), repr(err.args)):
            assert KEY not in text
        # no aiohttp exception (which may hold request headers) is chained for display
        assert err.__cause__ is None
        assert err.__context__ is None or err.__suppress_context__
    assert "***" in errors[0].message  # the upstream's message is kept, the key scrubbed
