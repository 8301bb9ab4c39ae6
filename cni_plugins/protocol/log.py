"""Plugin logging: stderr (the runtime shows or logs it) and, if asked, a file. Never stdout.

Not the ``logging`` package: importing it costs ~5 ms on every plugin exec, and a plugin
writes a handful of lines at most. ``CNI_PY_LOG_FILE`` appends the same lines to a file;
``CNI_PY_DEBUG=1`` turns on debug lines. Both are read from the plugin's environment.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

_state: dict[str, object] = {"stream": None, "debug": False, "file": "", "name": "cni"}


def configure(name: str, environ: Mapping[str, str], stream: TextIO) -> None:
    _state["name"] = name
    _state["stream"] = stream
    _state["debug"] = environ.get("CNI_PY_DEBUG", "") in ("1", "true")
    _state["file"] = environ.get("CNI_PY_LOG_FILE", "")


def snapshot() -> dict[str, object]:
    """The current settings, so a nested in-process plugin run can restore them."""
    return dict(_state)


def restore(saved: dict[str, object]) -> None:
    _state.update(saved)


def _emit(level: str, msg: str) -> None:
    line = f"{_state['name']}: {level}: {msg}\n"
    stream = _state["stream"] or sys.stderr
    try:
        stream.write(line)  # type: ignore[union-attr]
        stream.flush()  # type: ignore[union-attr]
    except (OSError, ValueError):
        pass
    path = _state["file"]
    if path:
        try:
            with open(str(path), "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] {line}")
        except OSError:
            pass


def note(msg: str) -> None:
    """Something the user should know (an option served differently than asked)."""
    _emit("note", msg)


def warning(msg: str) -> None:
    _emit("warning", msg)


def debugging() -> bool:
    return bool(_state["debug"])


def debug(msg: str) -> None:
    if _state["debug"]:
        _emit("debug", msg)
