"""Report blocks rendered as a self-contained HTML page or as markdown, alike."""

from __future__ import annotations

import html
from typing import Any

Block = tuple[str, Any]  # (kind, payload): h1/h2/h3/p/alert text, table Table, img Plot, details (summary, text)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1260px;margin:1.5em auto;padding:0 1em;
color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.6em}
.scroll{overflow-x:auto;margin:.4em 0 1.2em}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap;vertical-align:top}
th{background:#f3f3f3}th:first-child,td:first-child{text-align:left}
/* labels wrap at spaces; a run without spaces wider than the cell (a variant list such as
[softmax=power,norm=exact,...]) breaks inside it instead of running over the next column */
td:first-child{white-space:normal;overflow-wrap:break-word;min-width:14em;max-width:30em}
td.lines{white-space:pre}
td.wrap{white-space:normal;text-align:left;min-width:30em}
td.cliff{background:#d62728;color:#fff;font-weight:bold}
td.insecure{background:#ffd43b;font-weight:bold}
td.bad{color:#d62728;font-weight:bold}
.alert{border-left:6px solid #d62728;background:#fdecea;padding:.6em 1em;font-weight:bold;margin:1em 0}
figure{margin:.5em 0 1.5em}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:13px}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}
"""


def to_html(blocks: list[Block], title: str) -> str:
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body>"]  # fmt: skip
    for kind, payload in blocks:
        if kind in ("h1", "h2", "h3", "p"):
            parts.append(f"<{kind}>{html.escape(payload)}</{kind}>")
        elif kind == "alert":
            parts.append(f"<div class='alert'>{html.escape(payload)}</div>")
        elif kind == "table":
            parts.append(f"<div class='scroll'>{payload.to_html()}</div>")
        elif kind == "img":
            parts.append(f"<figure><img src='{html.escape(payload.file)}' alt='{html.escape(payload.title)}'>"
                         f"<figcaption>{html.escape(payload.caption)}</figcaption></figure>")  # fmt: skip
        elif kind == "details":
            summary, text = payload
            parts.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for kind, payload in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append("#" * int(kind[1]) + " " + payload)
        elif kind == "p":
            parts.append(payload)
        elif kind == "alert":
            parts.append(f"> **{payload}**")
        elif kind == "table":
            parts.append(payload.to_markdown())
        elif kind == "img":
            parts.append(f"![{payload.title}]({payload.file})\n\n*{payload.caption}*")
        elif kind == "details":
            summary, text = payload
            parts.append(f"<details><summary>{summary}</summary>\n\n```json\n{text}\n```\n\n</details>")
    return "\n\n".join(parts) + "\n"
