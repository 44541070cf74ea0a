"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml); build code, not a page.

Five jobs, so that every text is written once, in the repository, and the site only shows it:

- ``<!-- include-section FILE "HEADING" -->`` on a line of its own is replaced by the body of
  that section of ``FILE`` (a path from the repository root): the lines after the heading line, up
  to the next heading of the same or a higher level. ``... "HEADING" to "OTHER HEADING" -->`` ends
  the body at that heading instead. Headings are matched whole (``## Quickstart``), outside
  fenced code. A README section found by its heading survives edits around it, where a
  line range of ``pymdownx.snippets`` would not; a heading that is gone fails the build.
- ``<!-- notebook FILE -->`` (a path from the repository root) is replaced by the notebook's
  first Markdown cell, a list of its sections and a link to the ``.ipynb`` file.
- The notebooks and the benchmark figures are added to the site as files, so that those links
  (and ``![...](results/x.png)`` in ``benchmarks/README.md``) resolve.
- Sphinx roles in docstrings (``:func:`fit```), which Markdown leaves as text, become code,
  linked to the object's heading where the API pages document it under that name (a full path,
  or the end of exactly one documented path: ``fit``, ``AutoAmortized.sample_posterior``).
- Lists are read as GitHub reads them (the included files are written for it): a list may
  follow a paragraph line directly, and a nested list may be indented by two spaces. Python-Markdown
  wants a blank line and four spaces, so a Markdown preprocessor adds them, after
  ``pymdownx.snippets`` has included the files and outside fenced code.

And a filter drops the docstring warnings listed in ``KNOWN_DOCSTRING_WARNINGS`` (known, reported,
to be fixed in the docstrings), so that ``mkdocs build --strict`` fails on any new one.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from markdown.extensions import Extension
from markdown.preprocessors import Preprocessor
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File
from mkdocs.utils import get_relative_url

ROOT = Path(__file__).resolve().parents[1]

# Repository files copied into the site, as (folder, glob): their site path is their repository
# path, so a page links them with a relative link that also works on GitHub.
SITE_FILES = [("notebooks", "*.ipynb"), ("benchmarks/results", "*.png")]

# Google-style `Args:` entries whose list of names wraps onto a second line: griffe cannot parse
# the first line. Delete an entry once its docstring lists the names on one line.
KNOWN_DOCSTRING_WARNINGS: tuple[str, ...] = ()  # none left; add one only with a report


class _KnownDocstringWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(known in message for known in KNOWN_DOCSTRING_WARNINGS)


_griffe_logger = logging.getLogger("mkdocs.plugins.griffe")
for _old in [f for f in _griffe_logger.filters if type(f).__name__ == "_KnownDocstringWarnings"]:
    _griffe_logger.removeFilter(_old)  # `mkdocs serve` loads this module again on each rebuild
_griffe_logger.addFilter(_KnownDocstringWarnings())

_INCLUDE = re.compile(
    r'^<!-- include-section (?P<file>\S+) "(?P<start>[^"]+)"(?: to "(?P<end>[^"]+)")? -->$',
    re.M)
_NOTEBOOK = re.compile(r"^<!-- notebook (?P<file>\S+) -->$", re.M)
_ROLE = re.compile(
    r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):<code[^>]*>"
    r"(?P<tilde>~?)\.?(?P<name>[^<]*)</code>")
_ROLE_MARK = re.compile(r'<code data-role-target="(?P<target>[^"]+)">(?P<text>[^<]*)</code>')
_ANCHOR = re.compile(r'id="(?P<id>amortized_ppl(?:\.\w+)*)"')

# The API objects' headings of this build: identifier -> page (filled by on_page_content).
_anchors: dict = {}


def _headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """``(line index, level, line)`` of every ATX heading outside fenced code."""
    found, fence = [], None
    for index, line in enumerate(lines):
        marker = re.match(r"^(```+|~~~+)", line)
        if marker:
            if fence is None:
                fence = marker.group(1)
            elif line.rstrip().startswith(fence) and set(line.rstrip()) == {fence[0]}:
                fence = None  # a closing fence: the opening's characters, at least as many
            continue
        heading = re.match(r"^(#{1,6}) \S", line)
        if fence is None and heading:
            found.append((index, len(heading.group(1)), line.rstrip()))
    return found


def _section(path: str, start: str, end: str | None) -> str:
    file = ROOT / path
    if not file.is_file():
        raise PluginError(f"include-section: no file {path!r} in the repository.")
    lines = file.read_text(encoding="utf-8").splitlines()
    headings = _headings(lines)
    starts = [(index, level) for index, level, line in headings if line == start]
    if len(starts) != 1:
        raise PluginError(f"include-section: {path} has {len(starts)} headings {start!r}, "
                          "not one: update the page that includes it.")
    first, level = starts[0]
    if end is None:
        stop = next((index for index, other, _ in headings if index > first and other <= level),
                    len(lines))
    else:
        stops = [index for index, _, line in headings if line == end and index > first]
        if not stops:
            raise PluginError(f"include-section: {path} has no heading {end!r} after {start!r}.")
        stop = stops[0]
    return "\n".join(lines[first + 1:stop]).strip("\n")


def _notebook(path: str, page_file: File) -> str:
    file = ROOT / path
    if not file.is_file():
        raise PluginError(f"notebook: no file {path!r} in the repository.")
    cells = json.loads(file.read_text(encoding="utf-8"))["cells"]
    markdown = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown"]
    if not markdown:
        raise PluginError(f"notebook: {path} has no Markdown cell to introduce it.")
    sections = [line[3:].strip() for text in markdown[1:] for line in text.splitlines()
                if line.startswith("## ")]
    link = Path(*[".."] * (len(Path(page_file.src_uri).parts) - 1), path).as_posix()
    name = Path(path).name
    parts = [markdown[0].strip(), ""]
    if sections:
        parts += ["## In the notebook", "", *[f"- {title}" for title in sections], ""]
    parts += [
        "## Run it", "",
        f"[Download `{name}`]({link}) (stored without outputs), or open it from a clone of the "
        "repository, where the package is installed with the `notebooks` extra:", "",
        f'    pip install -e ".[notebooks]" && jupyter lab {path}', "",
    ]
    return "\n".join(parts)


_LIST_ITEM = re.compile(r"^(?P<indent> *)(?:[-*+]|\d+[.)]) \S")


def github_lists(lines: list[str]) -> list[str]:
    """GitHub's lists in Python-Markdown's terms (fenced code is left alone).

    - A list item right after a paragraph line that is not a list item's gets a blank line
      before it (GitHub starts a list there, Python-Markdown continues the paragraph).
    - Inside a list (from an unindented item to an unindented paragraph after a blank line),
      lines indented by 2 or 3 spaces (on GitHub, a ``- `` or ``1. `` item's content: nested
      items, continuation lines, later paragraphs) are indented by 4, as Python-Markdown wants.
    - There, a block indented by 4 or more after a blank line is meant as code (as it would be
      outside a list): it is indented by 4 more, to stay code inside the item.

    mkdocstrings' ``::: identifier`` lines and their indented options are left alone too.
    """
    out: list[str] = []
    fence = None  # the opening fence, while in fenced code
    in_list = False
    block = None  # the current block: None after a blank line, "item", "text" or "code"
    for line in lines:
        marker = re.match(r"^ {0,3}(```+|~~~+)", line)
        if fence is not None:
            if marker and set(line.strip()) == {fence[0]} and len(line.strip()) >= len(fence):
                fence = None
            out.append(line)
            continue
        if marker:
            fence, block = marker.group(1), "text"
            out.append(line)
            continue
        if line.startswith("::: ") or block == "autodoc" and line.startswith(" "):
            # mkdocstrings' `::: identifier` and its indented YAML options
            block, in_list = "autodoc", False
            out.append(line)
            continue
        if not line.strip():
            block = None
            out.append(line)
            continue
        indent = len(line) - len(line.lstrip(" "))
        item = _LIST_ITEM.match(line)
        if item and indent == 0:
            in_list = True
        elif indent == 0 and block is None:
            in_list = False
        if item:
            if block == "text" and indent <= 3:
                out.append("")
            block = "item"
        elif in_list and indent >= 4 and block in (None, "code"):
            line, block = "    " + line, "code"
        elif block is None:
            block = "text"
        if in_list and 2 <= indent <= 3:
            line = " " * (4 - indent) + line
        out.append(line)
    return out


class _GitHubLists(Preprocessor):
    def run(self, lines):
        return github_lists(lines)


class GitHubListsExtension(Extension):
    def extendMarkdown(self, md):  # noqa: N802 (Python-Markdown's name)
        # After pymdownx.snippets (priority 32) has included the files, before the HTML blocks.
        md.preprocessors.register(_GitHubLists(md), "github_lists", 31)


def on_config(config):
    config.markdown_extensions.append(GitHubListsExtension())
    return config


def on_files(files, config):
    for folder, pattern in SITE_FILES:
        for path in sorted((ROOT / folder).glob(pattern)):
            uri = path.relative_to(ROOT).as_posix()
            if files.get_file_from_path(uri) is None:
                files.append(File(uri, str(ROOT), config["site_dir"],
                                  config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    markdown = _INCLUDE.sub(
        lambda m: _section(m.group("file"), m.group("start"), m.group("end")), markdown)
    return _NOTEBOOK.sub(lambda m: _notebook(m.group("file"), page.file), markdown)


def on_pre_build(config):
    _anchors.clear()  # `mkdocs serve` builds again in the same process


def on_page_content(html, page, config, files):
    for match in _ANCHOR.finditer(html):
        _anchors.setdefault(match.group("id"), page)

    def mark(match):
        name = match.group("name")
        text = name.rsplit(".", 1)[-1] if match.group("tilde") else name
        return f'<code data-role-target="{name}">{text}</code>'

    return _ROLE.sub(mark, html)


def _resolve(target: str) -> str | None:
    if target in _anchors:
        return target
    found = [identifier for identifier in _anchors if identifier.endswith("." + target)]
    return found[0] if len(found) == 1 else None


def on_env(env, config, files):
    # Every page's content is converted by now: link each role to its heading, or leave it code.
    for file in files.documentation_pages():
        page = file.page
        if page is None or page.content is None:
            continue

        def link(match, page=page):
            identifier = _resolve(match.group("target"))
            code = f"<code>{match.group('text')}</code>"
            if identifier is None:
                return code
            target = _anchors[identifier]
            url = "" if target is page else get_relative_url(target.url, page.url)
            return f'<a href="{url}#{identifier}" title="{identifier}">{code}</a>'

        page.content = _ROLE_MARK.sub(link, page.content)
    return env
