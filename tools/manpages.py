"""Manual pages from the reference pages: ``python3 tools/manpages.py OUTDIR VERSION``.

Each command's page in docs/ becomes OUTDIR/COMMAND.1 through docutils' man
writer (python3-docutils), so the reference pages and the manual never
disagree. What a manual page needs and a reference page does not have is
added here: the NAME line, a DESCRIPTION heading over the opening
paragraphs, links between pages as ``s6-tcprules(1)``, and SEE ALSO. Tables
lose their boxes, which nroff cannot draw above a table's first line.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from docutils import nodes
from docutils.core import publish_doctree, publish_from_doctree
from docutils.writers import manpage

DOCS = Path(__file__).resolve().parents[1] / "docs"
SHARED_DOCS = "/usr/share/doc/s6tls"

# command: what the NAME line says it does
PAGES = {
    "s6-tlsserver": "inetd-style TLS super-server, drop-in for skarnet's s6-tlsserver",
    "s6-tcprules": "explain, list, edit, import and compile access rules",
    "s6-accessrules-cdb-from-fs": "compile an access rules directory into a cdb file",
    "s6-accessrules-fs-from-cdb": "decompile an access rules cdb file into a directory",
}

_TITLE = re.compile(r"\A(=+)\n(.+)\n\1\n")
_FIRST_SECTION = re.compile(r"^.+\n=+\n", re.M)


def manual_source(command: str, text: str, version: str, date: str) -> str:
    """The reference page's text with a manual page's title, NAME line and SEE ALSO."""
    title = _TITLE.match(text)
    if title is None:
        raise ValueError(f"docs/{command}.rst does not start with an overlined title")
    body = text[title.end() :].lstrip("\n")
    if not _FIRST_SECTION.match(body):  # opening paragraphs: they describe
        body = f"Description\n===========\n\n{body}"
    rule = "=" * len(command)
    summary = PAGES[command]
    others = ", ".join(f"**{name}**\\ (1)" for name in PAGES if name != command)
    return (
        f"{rule}\n{command}\n{rule}\n\n"
        f"{'-' * len(summary)}\n{summary}\n{'-' * len(summary)}\n\n"
        f":Manual section: 1\n:Manual group: s6tls\n:Version: s6tls {version}\n"
        f":Date: {date}\n\n"
        f"{body.rstrip()}\n\n"
        f"See also\n========\n\n{others}\n\n"
        f"{SHARED_DOCS}/: the README, the reference pages (docs/) and the examples "
        "(rules-examples/).\n"
    )


def _link_pages(doctree: nodes.document) -> None:
    """Links to docs/*.rst become ``name(1)`` for a command, else name the file."""
    for ref in list(doctree.findall(nodes.reference)):
        target = ref.get("refuri", "")
        if not target.endswith(".rst") or "/" in target:
            continue
        name = target.removesuffix(".rst")
        if name in PAGES:
            ref.replace_self([nodes.strong(text=name), nodes.Text("(1)")])
        else:
            ref.replace_self(nodes.Text(f"{ref.astext()} (in {SHARED_DOCS}/docs/)"))


class _PlainTable(manpage.Table):
    """A table without rules or box; the last column takes the width left."""

    def as_list(self) -> list[str]:
        lines = [line for line in super().as_list() if line != "_\n"]
        columns = ["l"] * (len(self._coldefs) - 1) + ["lx"]
        lines[1:3] = [" ".join(columns) + ".\n"]
        return lines


class _Translator(manpage.Translator):  # type: ignore[misc]
    def visit_table(self, node: nodes.table) -> None:
        self._active_table = _PlainTable()


class _Writer(manpage.Writer):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.translator_class = _Translator


def manual_page(command: str, version: str, date: str) -> str:
    """The roff text of COMMAND(1)."""
    source = manual_source(command, (DOCS / f"{command}.rst").read_text(), version, date)
    settings = {"report_level": 2, "halt_level": 2, "input_encoding": "utf-8"}
    doctree = publish_doctree(
        source, source_path=f"docs/{command}.rst", settings_overrides=settings
    )
    _link_pages(doctree)
    roff = publish_from_doctree(doctree, writer=_Writer(), settings_overrides=settings)
    return roff.decode() if isinstance(roff, bytes) else str(roff)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: tools/manpages.py OUTDIR VERSION")
    out, version = Path(sys.argv[1]), sys.argv[2]
    # The changelog's date when a package build gives it, so that builds repeat.
    when = time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", time.time())))
    out.mkdir(parents=True, exist_ok=True)
    for command in PAGES:
        page = manual_page(command, version, time.strftime("%Y-%m-%d", when))
        (out / f"{command}.1").write_text(page)


if __name__ == "__main__":
    main()
