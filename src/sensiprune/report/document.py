"""One report, two renderings: markdown beside its PNGs, and a self-contained HTML file.

Reports are built once as a :class:`Document` of paragraphs, tables and images, so the two
formats can never disagree.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sensiprune.io.atomic import atomic_write_bytes


@dataclass(frozen=True)
class Table:
    """Cells are text with markdown's `code` and **bold** spans; numbers align right."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(self.header) - 1)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass(frozen=True)
class Image:
    file: str  # relative to the report's directory
    caption: str


Block = str | Table | Image


@dataclass
class Document:
    title: str
    sections: list[tuple[str, list[Block]]] = field(default_factory=list)

    def add(self, heading: str, *blocks: Block) -> None:
        self.sections.append((heading, list(blocks)))

    def write(self, directory: Path, stem: str = "report") -> tuple[Path, Path]:
        """Write ``stem.md`` and ``stem.html`` atomically; the PNGs must already exist."""
        markdown, page = directory / f"{stem}.md", directory / f"{stem}.html"
        atomic_write_bytes(markdown, self.markdown().encode())
        atomic_write_bytes(page, self.html(directory).encode())
        return markdown, page

    def markdown(self) -> str:
        parts = [f"# {self.title}"]
        for heading, blocks in self.sections:
            parts.append(f"## {heading}")
            parts += [_markdown_block(block) for block in blocks]
        return "\n\n".join(parts) + "\n"

    def html(self, directory: Path) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for heading, blocks in self.sections:
            body.append(f"<h2>{html.escape(heading)}</h2>")
            body += [_html_block(block, directory) for block in blocks]
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>"
            f"<body>{''.join(body)}</body></html>\n"
        )


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
    "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
    "img{max-width:100%}figcaption{color:#555;font-size:90%}code{background:#f3f3f3}"
)


def _markdown_block(block: Block) -> str:
    if isinstance(block, Table):
        return block.markdown()
    if isinstance(block, Image):
        return f"![{block.caption}]({block.file})"
    return block


def _html_block(block: Block, directory: Path) -> str:
    if isinstance(block, Table):
        head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
        rows = "".join(
            "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block.rows
        )
        return f"<table><tr>{head}</tr>{rows}</table>"
    if isinstance(block, Image):
        data = base64.b64encode((directory / block.file).read_bytes()).decode()
        caption = html.escape(block.caption)
        return (
            f"<figure><img src='data:image/png;base64,{data}' alt='{caption}'>"
            f"<figcaption>{caption}</figcaption></figure>"
        )
    return f"<p>{_inline(block)}</p>"


def _inline(text: str) -> str:
    """Markdown's `code` and **bold** spans, the only inline markup reports use."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))
    pieces = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))
