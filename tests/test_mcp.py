"""The race as an MCP tool, through the `mcp` client library over streamable HTTP, on the app launched with
its MCP server (tiny model): the only tool listed and the only one callable, its typed schema, a race
whose outputs match, callers who never see each other's runs, and a bad value answered with one line
that names the field (one log line, no traceback)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import APP_DOWNLOADS, launch_app
from tr.device.model import load_model
from webapp.mcp import TOOL_NAME
from webapp.settings import FIELDS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mcp_app(tiny_model_dir):
    """The app on the tiny model with its MCP server on (as app.py starts it): (demo, MCP endpoint URL)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_MCP_SERVER", "true")  # launch(mcp_server=None) reads it
        demo, port = launch_app(load_model(str(tiny_model_dir)))
    yield demo, f"http://127.0.0.1:{port}/gradio_api/mcp/"
    demo.close()
    APP_DOWNLOADS.pop(f"http://127.0.0.1:{port}/").close()


@pytest.fixture
def mcp_url(mcp_app):
    return mcp_app[1]


def session_call(url: str, action):
    """Run `action(session)` in an initialized MCP client session; its result."""

    async def go():
        async with streamable_http_client(url) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await action(session)

    return asyncio.run(go())


def test_the_race_is_the_only_tool_and_its_schema_is_typed(mcp_url):
    tools = session_call(mcp_url, lambda s: s.list_tools()).tools
    assert [t.name for t in tools] == [TOOL_NAME]
    schema, description = tools[0].inputSchema, tools[0].description
    assert schema["required"] == ["prompt"]
    types = {name: field["type"] for name, field in schema["properties"].items()}
    assert set(types) == set(FIELDS)  # every setting the page has, by the same names
    assert types["max_new_tokens"] == types["k"] == types["seed"] == "integer" and types["top_p"] == "number"
    assert schema["properties"]["k"]["default"] == 8 and "from 1 to 32" in schema["properties"]["k"]["description"]
    assert "Token Recycling" in description and "lossless" in description


def test_the_tool_waits_in_the_run_buttons_queue_and_the_page_keeps_its_api(mcp_app):
    endpoints = {fn.api_name: fn for fn in mcp_app[0].fns.values()}
    tool, run = endpoints[TOOL_NAME], endpoints["run"]
    assert tool.concurrency_id == run.concurrency_id == "model" and tool.concurrency_limit == run.concurrency_limit == 1
    assert tool.queue and run.api_visibility == "public"  # hidden from MCP only


def test_a_race_through_mcp_matches_plain_decoding(mcp_url):
    arguments = dict(prompt="Write a haiku about recycling.", max_new_tokens=16, decoding="greedy")
    result = session_call(mcp_url, lambda s: s.call_tool(TOOL_NAME, arguments))
    assert not result.isError, result.content
    race = json.loads(result.content[0].text)
    assert race["identical"] and race["first_difference"] is None
    tr, ar = race["token_recycling"], race["plain_decoding"]
    assert tr["text"].strip() and tr["text"] == ar["text"] and tr["tokens"] == ar["tokens"] == 16
    assert 0 < tr["steps"] <= ar["steps"] and race["mat"] >= 1 and race["speedup"] > 0
    assert "Done" in race["message"]


def test_a_bad_value_gets_one_line_naming_the_field(mcp_url, caplog):
    arguments = dict(prompt="Write a haiku about recycling.", max_new_tokens=16, k=999)
    with caplog.at_level(logging.INFO, logger="token-recycling-app"):
        result = session_call(mcp_url, lambda s: s.call_tool(TOOL_NAME, arguments))
    assert result.isError
    message = result.content[0].text
    assert "k must be a whole number from 1 to 32, got 999" in message and "\n" not in message, message
    records = [r for r in caplog.records if r.name == "token-recycling-app"]
    assert len(records) == 1 and records[0].exc_info is None


@pytest.mark.parametrize("name", [
    "call", "call_1", "call_6", "call_7",  # how Gradio names the page's handlers (each one a function `call`)
    "run", "step", "replay", "lookup", "show_step", "reset_matrix", "stop", TOOL_NAME + "_1", "", "../run",
])
def test_nothing_but_the_race_tool_is_callable(mcp_url, name):
    result = session_call(mcp_url, lambda s: s.call_tool(name, {}))
    assert result.isError and f"Unknown tool for this Gradio app: {name}" in result.content[0].text


def test_the_schema_lists_the_race_tool_alone(mcp_url):
    import httpx

    schema = httpx.get(mcp_url.removesuffix("/") + "/schema", timeout=30).json()
    assert [tool["name"] for tool in schema] == [TOOL_NAME]


def test_callers_see_only_their_own_runs(mcp_url):
    """Two callers race with their own secrets: each result holds its caller's run only, no run, record or
    replay outlives a call, and an API client's replay is its own session's (none)."""
    from gradio_client import Client

    def race(secret: str) -> dict:
        arguments = dict(prompt=f"Repeat after me: {secret}", max_new_tokens=8)
        result = session_call(mcp_url, lambda s: s.call_tool(TOOL_NAME, arguments))
        assert not result.isError, result.content
        return json.loads(result.content[0].text)

    first, second = race("zebra-7731"), race("walrus-0042")
    assert "walrus" not in json.dumps(first) and "zebra" not in json.dumps(second)
    app_url = mcp_url.split("gradio_api")[0]
    assert APP_DOWNLOADS[app_url].files() == []  # no record of either run is left to fetch
    api = Client(app_url, verbose=False, analytics_enabled=False)
    assert api.predict(api_name="/replay")[0].startswith("Nothing to replay yet")
