"""Where requests enter the app through Gradio: two hooks on the page's gr.Blocks, so that every request,
however it is sent, reaches the app's own checks (`webapp.settings`) and nothing else.

- `OneTool`: the MCP server lists and calls the race tool alone.
- `ShortRequests`: a raw API call that sends fewer values than an event takes gets the rest as the
  inputs' defaults, so the app's checks answer it in one line (Gradio would raise before the handler
  runs and print a traceback).
"""

from __future__ import annotations

from typing import Any

from .mcp import TOOL_NAME


class OneTool:
    """A mixin for gr.Blocks: its MCP server lists and calls the race tool and nothing else.

    Gradio builds the server at launch and assigns it to `mcp_server_obj` before it serves a request; the
    server maps tool names to endpoints once (`tool_to_endpoint`), and answers a name it does not map with
    "Unknown tool". So the map is cut down to the race tool as the server is assigned."""

    _mcp_server = None

    @property
    def mcp_server_obj(self) -> Any:
        return self._mcp_server

    @mcp_server_obj.setter
    def mcp_server_obj(self, server: Any) -> None:
        if server is not None:
            server.tool_to_endpoint = {tool: endpoint for tool, endpoint in server.tool_to_endpoint.items()
                                       if endpoint.lstrip("/") == TOOL_NAME}
        self._mcp_server = server


class ShortRequests:
    """A mixin for gr.Blocks: missing trailing input values take their inputs' defaults."""

    def validate_inputs(self, block_fn: Any, inputs: list[Any]) -> None:
        inputs.extend(getattr(block, "value", None) for block in block_fn.inputs[len(inputs):])
