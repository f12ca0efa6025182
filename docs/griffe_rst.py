"""Griffe extension for graphode's docs: reStructuredText bits in docstrings → Markdown.

graphode's docstrings use Google-style sections (``Args:``, ``Returns:``), which mkdocstrings
parses, plus a few reStructuredText habits that Markdown would show verbatim. Before the
docstrings are parsed this rewrites:

* roles — ``:class:`~graphode.layer.ConnectomeConv``` (also ``:func:``, ``:mod:``,
  ``:meth:``, ``:data:``, ``:attr:``, ``:exc:``, ``:obj:``) — into optional cross-references:
  a link when the target is documented, plain code otherwise (torch, PyG, ...), so strict
  builds never fail on them;
* ``.. math::`` blocks into ``$$ … $$`` (rendered by MathJax through arithmatex);
* literal-block markers (``text::``) into ``text:``;
* simple tables (``====  ====``) into fenced text blocks;
* definition lists (a term line followed by a description indented by four spaces) into
  Markdown definition lists.

Loaded by ``mkdocs.yml`` (``extensions: [docs/griffe_rst.py]``); not part of the package.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(class|func|mod|meth|data|attr|exc|obj):`(~?)([^`]+)`")
_TABLE_BORDER = re.compile(r"^=+( +=+)+\s*$")


def _role(match: re.Match, module: str, known: dict[str, str]) -> str:
    _, tilde, target = match.groups()
    target = target.strip()
    title = target.rsplit(".", 1)[-1] if tilde else target
    if target.endswith("()"):
        target = target[:-2]
    candidates = [target]
    if not target.startswith("graphode"):
        candidates += [f"{module}.{target}", f"graphode.{target}"]
    for identifier in candidates:
        if identifier in known:
            return f'<autoref identifier="{known[identifier]}" optional><code>{title}</code></autoref>'
    return f"`{title}`"


def _math_blocks(lines: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == ".. math::":
            indent = len(line) - len(line.lstrip())
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                body.append(lines[i].strip())
                i += 1
            while body and not body[-1]:
                body.pop()
            pad = " " * indent
            out += [pad + "$$", *[pad + b for b in body if b], pad + "$$", ""]
            continue
        out.append(line)
        i += 1
    return out


def _tables(lines: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(lines):
        if _TABLE_BORDER.match(lines[i]):
            borders, j = 0, i
            while j < len(lines):
                if _TABLE_BORDER.match(lines[j]):
                    borders += 1
                    if borders == 3:
                        break
                j += 1
            if borders == 3:
                out += ["```text", *lines[i : j + 1], "```"]
                i = j + 1
                continue
        out.append(lines[i])
        i += 1
    return out


def _definition_lists(lines: list[str]) -> list[str]:
    out: list[str] = []
    in_fence = False
    convert_next = False
    for i, line in enumerate(lines):
        if convert_next:
            out.append(":   " + line[4:])
            convert_next = False
            continue
        if line.startswith("```"):
            in_fence = not in_fence
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        prev = lines[i - 1] if i else ""
        is_term = (
            not in_fence and line.strip() and line[0] != " " and not line.rstrip().endswith(":")
            and not line.startswith("$$") and nxt.startswith("    ") and nxt[4:5].strip()
            and (not prev.strip() or prev.startswith("    "))
        )
        if is_term:
            if out and out[-1].strip():
                out.append("")  # Markdown definition lists need a blank line between items
            convert_next = True
        out.append(line)
    return out


def convert(text: str, module: str, known: dict[str, str]) -> str:
    text = _ROLE.sub(lambda m: _role(m, module, known), text)
    lines = text.split("\n")
    lines = _math_blocks(lines)
    lines = _tables(lines)
    lines = [re.sub(r"(\S)::$", r"\1:", ln) if not ln.lstrip().startswith("..") else ln for ln in lines]
    lines = [ln for ln in lines if ln.strip() != "::"]
    lines = _definition_lists(lines)
    return "\n".join(lines)


class RSTToMarkdown(griffe.Extension):
    """Rewrite every docstring of the loaded package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        objects: list[griffe.Object] = []
        known: dict[str, str] = {}  # documented path (or re-export such as graphode.solve) -> target

        def walk(obj: griffe.Object) -> None:
            objects.append(obj)
            if not obj.name.startswith("_"):
                known[obj.path] = obj.path
            for member in obj.members.values():
                if member.is_alias:
                    if not member.name.startswith("_") and member.target_path.startswith("graphode."):
                        known.setdefault(member.path, member.target_path)
                else:
                    walk(member)

        walk(pkg)
        for obj in objects:
            if obj.docstring is not None:
                module = obj.module.path if not obj.is_module else obj.path
                obj.docstring.value = convert(obj.docstring.value, module, known)
