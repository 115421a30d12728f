"""The Jinja2 environment of valbench's self-contained HTML pages (report, compare)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["environment"]


def environment() -> Any:
    """Templates from ``valbench/templates``: autoescaped, undefined names an error, and a
    ``pretty_json`` filter."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False)
    return env
