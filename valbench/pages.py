"""The Jinja2 environment of valbench's self-contained HTML pages (report, compare)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["environment"]


def environment() -> Any:
    """Templates from ``valbench/templates``: autoescaped, undefined names an error, and the
    ``pretty_json`` and ``sentence`` (first letter upper case, the rest as written) filters."""
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
    # Jinja's capitalize lowercases the rest ("mislabel detection auc"); this keeps it.
    env.filters["sentence"] = lambda v: str(v)[:1].upper() + str(v)[1:]
    return env
