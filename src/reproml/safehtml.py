"""Every HTML page reproml writes, safe whatever the data holds.

The data on these pages is not ours: category values come from a user's CSV, batches from
production, quarantine reasons quote both. Two rules keep a value from ever becoming markup:

- Pages reproml builds itself (`monitoring/reports/index.html`, `simulation.html`) are Jinja2
  templates under `reproml/templates/`, rendered with autoescape on, so a value is text unless a
  template marks it safe (only the SVG plots, which are built from escaped parts).
- Evidently 0.7 writes a report's data as raw JSON inside a `<script>` block (its
  `file_html_template`): a value such as `</script><script>...` closes that block and runs.
  `evidently_html` takes the page Evidently renders and re-escapes its two data lines so that
  `<`, `>`, `&`, U+2028 and U+2029 become `\\u003c`-style escapes. That is the same JSON (the report
  shows the same values) and no longer anything an HTML parser can end a script with.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from reproml.errors import ReproError
from reproml.io import write_with

# characters that let JSON text inside <script> end the block, open a comment or break a JS string
_SCRIPT_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_SCRIPT_UNSAFE = re.compile("[<>&\u2028\u2029]")

# Evidently's file_html_template: `var <id> = <json>;` and `var additional_graphs_<id> = <json>;`,
# one line each (json.dumps without indent writes no newline; a newline in a value is `\n`).
_EVIDENTLY_DATA_LINE = re.compile(
    r"^(?P<head>[ \t]*var (?:additional_graphs_)?metric_[0-9a-f]{32} = )(?P<json>.*);[ \t]*$",
    re.MULTILINE,
)


class UnsafeHtmlError(ReproError):
    """A page could not be made safe, so it is not written."""


def script_safe(json_text: str) -> str:
    """`json_text` (valid JSON) that no HTML parser can end a `<script>` block inside.

    `<`, `>` and `&` only ever occur inside JSON strings (never in an escape sequence), and U+2028/2029
    likewise, so replacing each with its `\\uXXXX` escape gives the same JSON value.
    """
    return _SCRIPT_UNSAFE.sub(lambda m: _SCRIPT_ESCAPES[m.group()], json_text)


def escape_evidently_page(page: str) -> str:
    """Evidently's standalone report page with its two data lines escaped for `<script>`.

    Everything else (Evidently's template, scripts and fonts) is left as it is. Any other layout
    (a different Evidently) is refused rather than written unescaped.
    """
    found = len(_EVIDENTLY_DATA_LINE.findall(page))
    if found != 2:
        import evidently

        raise UnsafeHtmlError(
            f"Evidently {evidently.__version__}'s report page has {found} data lines where reproml "
            "expects 2 (`var metric_<id> = ...;` and `var additional_graphs_metric_<id> = ...;`): its "
            "HTML layout changed, so reproml cannot escape the report data and does not write the report"
        )
    return _EVIDENTLY_DATA_LINE.sub(lambda m: f"{m['head']}{script_safe(m['json'])};", page)


def evidently_html(snapshot: Any) -> str:
    """The standalone HTML of an Evidently snapshot (`get_html_str`), safe to open whatever its data."""
    return escape_evidently_page(snapshot.get_html_str(as_iframe=False))


def write_evidently_html(snapshot: Any, target: Path) -> Path:
    """Write `evidently_html(snapshot)` to `target` atomically (the only way reproml saves a report)."""
    page = evidently_html(snapshot)
    return write_with(target, lambda p: p.write_text(page, encoding="utf-8"))


@functools.cache
def _templates() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("reproml", "templates"),
        autoescape=True,  # every template, whatever its name: a value is text unless marked safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["f1"] = lambda value: f"{float(value):.1f}"  # SVG coordinates
    return environment


def render(template: str, **context: Any) -> str:
    """`reproml/templates/<template>` rendered with `context`, every value HTML-escaped."""
    return str(_templates().get_template(template).render(**context))


def markup(fragment: str) -> Any:
    """`fragment` as markup a template inserts unescaped: only for HTML reproml built from escaped parts."""
    import markupsafe

    return markupsafe.Markup(fragment)


def write_page(target: Path, page: str) -> Path:
    """Write a rendered page atomically, as UTF-8 (its `<meta charset>`)."""
    return write_with(target, lambda p: p.write_text(page, encoding="utf-8"))
