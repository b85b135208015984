"""Tables written atomically as CSV and markdown, and printed with rich."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from infoflow.utils.checkpoint import atomic_write


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def write_markdown(df: pd.DataFrame, path: str | Path, title: str = "", note: str = "") -> Path:
    """A markdown table (with an optional title and provenance note) via `to_markdown_table`."""
    text = (f"## {title}\n\n" if title else "") + to_markdown_table(df) + (f"\n\n{note}\n" if note else "\n")
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def to_markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """GitHub-flavoured markdown (no `tabulate` dependency)."""
    def cell(v: object) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def print_table(df: pd.DataFrame, title: str = "", floatfmt: str = ".3f") -> None:
    """Print `df` to the terminal as a rich table (floats with `floatfmt`)."""
    table = Table(title=title or None)
    for column in df.columns:
        table.add_column(str(column), justify="right" if pd.api.types.is_numeric_dtype(df[column]) else "left")
    for row in df.itertuples(index=False):
        table.add_row(*(format(v, floatfmt) if isinstance(v, float) else str(v) for v in row))
    Console().print(table)
