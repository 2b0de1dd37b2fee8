"""Every reference in the repository's documentation and sources resolves inside the repository.

- Markdown links (`[text](target)`, images, reference definitions, `<a href>`) in README.md and
  docs/**/*.md: a relative target must exist, resolved from the linking file and never outside the
  repository root; a `#anchor` into a Markdown file must match one of its headings (GitHub's slug) or an
  explicit `<a id=...>`; an absolute target must be a public http(s) URL.
- `docs/<page>.md[#anchor]` citations in Python sources, configs and the README resolve the same way,
  from the repository root.
- No public file mentions the internal design notes, which users do not have.

Plain text processing: no torch, no lappdeploy import. The checks are functions of a repository root, so
the tests at the bottom also run them on small fabricated repositories to show that they catch what they
should.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]

# Markdown files whose links are checked (globs relative to the root).
MARKDOWN_GLOBS = ("README.md", "docs/**/*.md")
# Files whose `docs/<page>.md#anchor` citations are checked (globs relative to the root).
CITING_GLOBS = (
    "README.md",
    "lappdeploy/**/*.py",
    "benchmarks/**/*.py",
    "tools/**/*.py",
    "configs/**/*.yaml",
    "configs/**/*.yml",
)
# Files and folders that must not mention the internal design notes (relative to the root).
PUBLIC_PATHS = ("README.md", "docs", "lappdeploy", "benchmarks", "tools", "configs", "Makefile", "setup.cfg")
# The notes by file name or folder, and their section numbering ("LAPP section 7").
INTERNAL_NOTES = re.compile(
    r"(?<![\w-])(?:LAPP|DEPLOY|SEED_METHODS|ARCHITECTURE)\.md|shared/design|\bLAPP sections? \d"
)
PUBLIC_SCHEMES = ("http", "https", "mailto")
DOCS_INDEX = "docs/README.md"

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)")
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"  # [text], one level of nested brackets allowed
    r"\(\s*(<[^>\n]*>|[^)\s]+)"  # (target
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"  # optional "title")
)
_REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>\n]*>|\S+)", re.M)
_HTML_TARGET = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_HTML_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_ATX_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(.*?))?[ \t]*(?:[ \t]#+[ \t]*)?$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(?:=+|-+)[ \t]*$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_CITATION = re.compile(r"(?<![\w./-])docs/[\w./-]*?\.md(?:#[\w-]+)?")


# ----------------------------------------------------------------------------------------- helpers
def _read(path: Path) -> str | None:
    """The file's text, or None for binary files."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace")


def _files(root: Path, globs: tuple[str, ...]) -> list[Path]:
    found: set[Path] = set()
    for pattern in globs:
        found.update(p for p in root.glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
    return sorted(found)


def _rel(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _blank(match: re.Match) -> str:
    return re.sub(r"[^\n]", " ", match.group(0))


def _without_fenced_code(text: str) -> str:
    """`text` with every fenced code block blanked out (same length, same line numbers)."""
    lines = text.split("\n")
    fence = None
    for i, line in enumerate(lines):
        opening = _FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
            lines[i] = " " * len(line)
        elif fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                fence = None
            lines[i] = " " * len(line)
    return "\n".join(lines)


def _without_code(text: str) -> str:
    """`text` with fenced code blocks and inline code spans blanked out: links inside code are not links."""
    return _INLINE_CODE.sub(_blank, _without_fenced_code(text))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: rendered text, lower case, punctuation removed, spaces to dashes."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML renders as nothing here
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.cache
def markdown_anchors(path: str) -> frozenset[str]:
    """Every anchor of a Markdown file: heading slugs (with GitHub's -1, -2 suffixes for repeats) and
    explicit `<a id=...>` / `<a name=...>` anchors."""
    text = _read(Path(path)) or ""
    lines = _without_fenced_code(text).split("\n")
    headings = []
    for i, line in enumerate(lines):
        atx = _ATX_HEADING.match(line)
        if atx:
            headings.append(atx.group(1) or "")
        elif (
            i > 0
            and _SETEXT_UNDERLINE.match(line)
            and lines[i - 1].strip()
            and not _ATX_HEADING.match(lines[i - 1])
            and not lines[i - 1].lstrip().startswith(("|", "-", "*", "+", ">"))
        ):
            headings.append(lines[i - 1])
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in headings:
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    anchors.update(m.group(1) for m in _HTML_ANCHOR.finditer(text))
    return frozenset(anchors)


def target_problem(root: Path, base_dir: Path, target: str) -> str | None:
    """Why `target` (as written in a file of `base_dir`) does not resolve inside `root`; None when it does."""
    target = target.strip()
    if target.startswith("<") and target.endswith(">"):
        target = target[1:-1].strip()
    if not target:
        return "empty link target"
    scheme = _SCHEME.match(target)
    if scheme:
        if scheme.group(1).lower() in PUBLIC_SCHEMES:
            return None
        return f"{scheme.group(1)}: links do not resolve for users; link a file in the repository or a public URL"
    if target.startswith("//"):
        return "protocol-relative URL; write https://"
    path_part, _, anchor = target.partition("#")
    path_part = unquote(path_part.split("?", 1)[0])
    root_abs = os.path.normpath(os.path.abspath(root))
    if not path_part:
        resolved = os.path.normpath(os.path.abspath(base_dir))  # "#anchor": this very file, checked below
    elif path_part.startswith("/"):
        resolved = os.path.normpath(os.path.join(root_abs, path_part.lstrip("/")))
    else:
        resolved = os.path.normpath(os.path.join(os.path.abspath(base_dir), path_part))
    if resolved != root_abs and not resolved.startswith(root_abs + os.sep):
        return "points outside the repository"
    if not os.path.exists(resolved):
        return f"{_rel(root, Path(resolved))} does not exist in the repository"
    anchor = unquote(anchor)
    if anchor and resolved.lower().endswith(".md") and os.path.isfile(resolved):
        anchors = markdown_anchors(resolved)
        if anchor not in anchors:
            near = sorted(a for a in anchors if a.split("-")[0] == anchor.split("-")[0]) or sorted(anchors)[:8]
            return f"no heading or anchor #{anchor} in {_rel(root, Path(resolved))} (anchors include: {near})"
    return None


# ----------------------------------------------------------------------------------------- checks
def markdown_link_problems(root: Path, globs: tuple[str, ...] = MARKDOWN_GLOBS) -> list[str]:
    """'file:line: target: why' for every link in the Markdown files that does not resolve."""
    problems = []
    for path in _files(root, globs):
        text = _read(path)
        if text is None:
            continue
        visible = _without_code(text)
        targets = [(m.start(1), m.group(1)) for m in _INLINE_LINK.finditer(visible)]
        targets += [(m.start(1), m.group(1)) for m in _REFERENCE_DEFINITION.finditer(visible)]
        targets += [(m.start(1), m.group(1)) for m in _HTML_TARGET.finditer(visible)]
        for index, target in sorted(targets):
            base = path if target.strip().lstrip("<").startswith("#") else path.parent
            why = target_problem(root, base, target)
            if why:
                problems.append(f"{_rel(root, path)}:{_line_of(text, index)}: link ({target}): {why}")
    return problems


def citation_problems(root: Path, globs: tuple[str, ...] = CITING_GLOBS) -> list[str]:
    """'file:line: citation: why' for every `docs/<page>.md[#anchor]` mention that does not resolve."""
    problems = []
    for path in _files(root, globs):
        text = _read(path)
        if text is None:
            continue
        for match in _CITATION.finditer(text):
            why = target_problem(root, root, match.group(0))
            if why:
                problems.append(f"{_rel(root, path)}:{_line_of(text, match.start())}: cites {match.group(0)}: {why}")
    return problems


def internal_note_problems(root: Path, paths: tuple[str, ...] = PUBLIC_PATHS) -> list[str]:
    """'file:line: text' for every mention of the internal design notes in public files."""
    problems = []
    files: list[Path] = []
    for name in paths:
        path = root / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        text = _read(path)
        if text is None:
            continue
        for match in INTERNAL_NOTES.finditer(text):
            token = re.search(r"[\w./-]*$", text[: match.start()]).group(0)
            if re.match(r"(?:\.{0,2}/)*docs/", token):
                continue  # a page of docs/ that happens to share a name
            line = text.count("\n", 0, match.start())
            quoted = text.split("\n")[line].strip()
            problems.append(
                f"{_rel(root, path)}:{line + 1}: mentions internal notes ({match.group(0)}), which users do not "
                f"have; cite docs/ instead: {quoted[:160]}"
            )
    return problems


# ----------------------------------------------------------------------------------------- the repository
def test_markdown_links_resolve_inside_the_repository():
    problems = markdown_link_problems(REPO_ROOT)
    assert not problems, "Markdown links that do not resolve:\n" + "\n".join(problems)


def test_docs_citations_in_sources_resolve():
    problems = citation_problems(REPO_ROOT)
    assert not problems, "docs/ citations that do not resolve:\n" + "\n".join(problems)


def test_no_public_file_mentions_the_internal_design_notes():
    problems = internal_note_problems(REPO_ROOT)
    assert not problems, "mentions of internal notes:\n" + "\n".join(problems)


def test_every_docs_page_is_in_the_index():
    index = REPO_ROOT / DOCS_INDEX
    assert index.is_file(), f"{DOCS_INDEX} is missing: it is the index of the documentation pages"
    text = _without_code(index.read_text(encoding="utf-8"))
    linked = {
        os.path.normpath(os.path.join(index.parent, unquote(m.group(1).strip("<>").partition("#")[0])))
        for m in _INLINE_LINK.finditer(text)
    }
    pages = [p for p in _files(REPO_ROOT, ("docs/**/*.md",)) if p != index]
    missing = [_rel(REPO_ROOT, p) for p in pages if os.path.normpath(p) not in linked]
    assert not missing, f"{DOCS_INDEX}: pages not listed in the index: {missing}"


def test_readme_links_the_docs_index():
    text = _without_code((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    targets = [m.group(1).strip("<>").partition("#")[0].rstrip("/") for m in _INLINE_LINK.finditer(text)]
    assert any(t in (DOCS_INDEX, "./" + DOCS_INDEX, "docs") for t in targets), (
        f"README.md: no link to the documentation index ({DOCS_INDEX})"
    )


def test_the_site_gives_headings_githubs_anchors():
    """The links are checked against GitHub's slugs; the site must give the same ones. mkdocs' default slug
    merges runs of hyphens, so a heading with `--round-to` had another anchor there than on GitHub."""
    pytest.importorskip("pymdownx.slugs")  # the docs extra
    config = yaml.unsafe_load((REPO_ROOT / "mkdocs.yml").read_text(encoding="utf-8"))  # our own file: its
    # !!python/object/apply tag builds the slug function mkdocs uses
    toc = next(e["toc"] for e in config["markdown_extensions"] if isinstance(e, dict) and "toc" in e)
    site_slug = toc.get("slugify")
    assert site_slug is not None, "mkdocs.yml: the toc extension keeps mkdocs' default slug, not GitHub's"
    for heading in ("Width steps and --round-to auto", "Links: the paper & more", "Latency vs MACs (a_b.py)"):
        assert site_slug(heading, "-") == github_slug(heading)


def test_the_strict_docs_build_is_not_silenced():
    """`mkdocs build --strict --quiet` passes whatever the warnings: --quiet drops the warnings --strict counts."""
    build = [line for line in (REPO_ROOT / "Makefile").read_text().splitlines() if "mkdocs build" in line]
    assert build and all("--strict" in line and "--quiet" not in line and " -q" not in line for line in build)


# ----------------------------------------------------------------------------------------- the checks themselves
def _fake_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "pkg").mkdir()
    (root / "docs" / "page.md").write_text(
        "# Page\n\n## Freeze, budget guarantee and removal\n\n## `trtexec.sh`\n\n## Repeat\n\n## Repeat\n\n"
        'Setext heading\n--------------\n\n<a id="explicit-anchor"></a>\n'
        "```\n## not a heading\n[not a link](missing.md)\n```\n",
        encoding="utf-8",
    )
    return root


def test_slugs_follow_github():
    assert github_slug("Freeze, budget guarantee and removal") == "freeze-budget-guarantee-and-removal"
    assert github_slug("`trtexec.sh`") == "trtexecsh"
    assert github_slug("Latency vs MACs") == "latency-vs-macs"
    assert github_slug("Masks and the straight-through gradient") == "masks-and-the-straight-through-gradient"
    assert github_slug("Links: [the paper](https://arxiv.org) & more") == "links-the-paper--more"


def test_anchors_of_a_page(tmp_path):
    root = _fake_repo(tmp_path)
    anchors = markdown_anchors(str(root / "docs" / "page.md"))
    assert {"page", "freeze-budget-guarantee-and-removal", "trtexecsh", "repeat", "repeat-1"} <= anchors
    assert {"setext-heading", "explicit-anchor"} <= anchors
    assert "not-a-heading" not in anchors


def test_link_checker_accepts_good_links_and_reports_bad_ones(tmp_path):
    root = _fake_repo(tmp_path)
    (root / "README.md").write_text(
        "\n".join(
            [
                "[ok](docs/page.md) [ok](docs/page.md#trtexecsh) [ok](https://arxiv.org/abs/2309.14157)",
                "[ok](#intro) ![ok](docs/page.md) [ok](docs/) [ok](</docs/page.md#repeat-1>)",
                "# Intro",
                "`[code, not a link](nowhere.md)`",
                "[dead](docs/missing.md)",
                "[bad anchor](docs/page.md#no-such-section)",
                "[outside](../shared/design/LAPP.md)",
                "[local file](file:///home/me/notes.md)",
                "[ref]: docs/gone.md",
                '<a href="docs/page.md#nowhere">html</a>',
            ]
        ),
        encoding="utf-8",
    )
    (root / "docs" / "other.md").write_text("[up](../README.md#intro) [self](#top)\n# Top\n", encoding="utf-8")
    problems = markdown_link_problems(root)
    assert len(problems) == 6, "\n".join(problems)
    expected = [
        ("README.md:5:", "docs/missing.md does not exist"),
        ("README.md:6:", "no heading or anchor #no-such-section in docs/page.md"),
        ("README.md:7:", "points outside the repository"),
        ("README.md:8:", "file: links do not resolve"),
        ("README.md:9:", "docs/gone.md does not exist"),
        ("README.md:10:", "no heading or anchor #nowhere"),
    ]
    for (where, why), problem in zip(expected, problems, strict=True):
        assert problem.startswith(where) and why in problem, problem


def test_citation_checker_resolves_docs_paths_and_anchors(tmp_path):
    root = _fake_repo(tmp_path)
    (root / "lappdeploy").mkdir()
    (root / "lappdeploy" / "mod.py").write_text(
        '"""See docs/page.md#repeat and docs/page.md."""\n'
        "X = 1  # (docs/page.md#missing-anchor)\n"
        'HELP = "bypass (docs/absent.md#bypass)"\n',
        encoding="utf-8",
    )
    problems = citation_problems(root)
    assert len(problems) == 2, "\n".join(problems)
    assert problems[0].startswith("lappdeploy/mod.py:2: cites docs/page.md#missing-anchor: no heading")
    assert problems[1].startswith("lappdeploy/mod.py:3: cites docs/absent.md#bypass: docs/absent.md does not exist")


def test_internal_notes_checker_flags_every_mention(tmp_path):
    root = _fake_repo(tmp_path)
    (root / "lappdeploy").mkdir()
    (root / "lappdeploy" / "mod.py").write_text(
        '"""Cubic budget (LAPP.md section 5)."""\nWARMUP = 50  # (DEPLOY.md)\nOK = "docs/lapp.md"\n'
        "# the bypass (LAPP section 7)\n",
        encoding="utf-8",
    )
    (root / "configs").mkdir()
    (root / "configs" / "a.yaml").write_text("# see ../shared/design/ARCHITECTURE.md\n", encoding="utf-8")
    problems = internal_note_problems(root)
    where = [p.split(": mentions")[0] for p in problems]
    assert where == [
        "lappdeploy/mod.py:1",
        "lappdeploy/mod.py:2",
        "lappdeploy/mod.py:4",
        "configs/a.yaml:1",
        "configs/a.yaml:1",
    ], problems
