"""The app's log: one timestamped line per rejected request, one entry per unexpected error (its id, then
its traceback).

The app's logger writes through a handler of its own and does not hand records on to the root logger, so
nothing another library does to logging (Gradio, the MCP server and its dependencies configure the root
logger) changes its lines. `configure_logging` is called once, by `app.main`.
"""

from __future__ import annotations

import logging
import sys
import uuid
from typing import TextIO

log = logging.getLogger("token-recycling-app")
LINE_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def configure_logging(stream: TextIO | None = None) -> logging.Handler:
    """Send the app's log to `stream` (standard error by default) in its own format; the handler added."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(LINE_FORMAT))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


MAX_MESSAGE_CHARS = 400  # a message may quote a value (a tree's paths, say): the visitor reads its start


def rejected(err: ValueError) -> str:
    """The visitor's message for rejected input, one line, logged as one line."""
    message = " ".join(str(err).split()) or type(err).__name__
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 1] + "…"
    log.info("rejected: %s", message[:300])
    return message


def unexpected(err: Exception, what: str) -> str:
    """Log the traceback once under a new id; the visitor's message, with that id."""
    error_id = uuid.uuid4().hex[:8]
    log.error("error %s in %s", error_id, what, exc_info=err)
    return f"something went wrong ({type(err).__name__}, error id {error_id}); the app is still running"
