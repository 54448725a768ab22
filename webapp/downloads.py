"""Run records written for download, with a bound on what is left on disk.

A session's record goes to one file in the app's own folder, replaced by its next run and removed when
the session ends (its replay page, made on demand, likewise); any file older than `max_age_s` is removed
at the next write, so files left by visitors who never come back go too. Gradio serves a copy from its
cache, which the app's `delete_cache` setting sweeps on the same schedule.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_AGE_S = 1800


class Downloads:
    def __init__(self, folder: Path | None = None, max_age_s: float = MAX_AGE_S,
                 clock: Callable[[], float] = time.time):
        self.folder = folder or Path(tempfile.mkdtemp(prefix="token-recycling-downloads-"))
        self.max_age_s, self.clock = max_age_s, clock
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written: dict[str, float] = {}  # path -> when written, by `clock`

    def write(self, content: dict[str, Any] | str, replaces: str | None = None) -> str:
        """Write a record (as JSON) or a page (HTML text) to a new file, removing the one it replaces and
        any that expired; its path."""
        self.remove(replaces)
        self.sweep()
        page = isinstance(content, str)
        handle, path = tempfile.mkstemp(prefix="replay-" if page else "run-", suffix=".html" if page else ".json",
                                        dir=self.folder)
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(content) if page else json.dump(content, file)
        self.written[path] = self.clock()
        return path

    def remove(self, path: str | None) -> None:
        if path:
            Path(path).unlink(missing_ok=True)
            self.written.pop(path, None)

    def sweep(self) -> None:
        """Remove every file written more than `max_age_s` ago."""
        cutoff = self.clock() - self.max_age_s
        for path in [p for p, written in self.written.items() if written < cutoff]:
            self.remove(path)

    def files(self) -> list[Path]:
        return sorted(self.folder.iterdir())

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.written.clear()
