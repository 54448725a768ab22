"""Calling the app as an API client does: a fresh `gradio_client.Client` is a fresh browser session."""

from __future__ import annotations

import re

from gradio_client import Client

from webapp.layout import OUTPUTS

# Outputs of /run and /stop, in OUTPUTS order without the session state (the API never sees it).
FIELDS = [name for name in OUTPUTS if name != "session"]
GOOD = dict(prompt="Write a haiku about recycling.", max_new_tokens=16, template="small-16", custom_json="", k=8,
            decoding="greedy", temperature=0.7, top_p=0.9, seed=0, start="hot", lookup="the")


def client(url: str) -> Client:
    return Client(url, verbose=False, analytics_enabled=False)


def run(c: Client, **changes) -> dict:
    """Call /run with GOOD settings changed by `changes`, and name its outputs."""
    return dict(zip(FIELDS, c.predict(**(GOOD | changes), api_name="/run")))


def plain(markdown: str) -> str:
    """A Markdown message as a reader sees its text: backslash escapes removed."""
    return re.sub(r"\\(.)", r"\1", markdown or "")
