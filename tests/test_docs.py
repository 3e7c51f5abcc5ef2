"""The front door and its links: README.md stays short, and every relative link and image of the
README, docs/*.md, benchmarks/README.md and the book's landing page points at something in the
repository (a file, a folder, a heading of a markdown file, or a page of the book's table of
contents), so that a reader following them never lands on nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 160

FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# MyST directives whose argument is a file: ```{figure} path, ```{image} path
DIRECTIVE = re.compile(r"^\{(figure|image)\}\s+(\S+)")
# What `dvc repro` writes is not in a fresh clone: a link there would be dead until a full run.
GENERATED = ("outputs/", "data/", "book/_build/", "book/notebooks/", "dvc_plots/")


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
            REPO / "benchmarks" / "README.md", REPO / "book" / "intro.md"]


def _prose(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(line number, line) of the prose outside fenced code, and the file arguments of MyST
    figure/image directives (which are written as fences)."""
    prose, directives, fence = [], [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line.strip())
        if fence is None and m:
            fence = m.group(1)
            d = DIRECTIVE.match(m.group(2).strip())
            if d:
                directives.append((n, d.group(2)))
            continue
        if fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
            continue
        prose.append((n, line))
    return prose, directives


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and links reduced to their text, lowercase,
    punctuation dropped (letters, digits, '_', '-' and spaces kept), spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose(path.read_text(encoding="utf-8"))[0]:
        m = HEADING.match(line)
        if not m:
            continue
        s = slug(m.group(2))
        k = seen.get(s, 0)
        seen[s] = k + 1
        out.add(s if k == 0 else f"{s}-{k}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link and image, and every figure/image directive."""
    prose, found = _prose(path.read_text(encoding="utf-8"))
    for n, line in prose:
        found += [(n, m.group(1)) for m in LINK.finditer(INLINE_CODE.sub("", line))]
    return sorted(found)


def book_pages() -> set[str]:
    """The book's pages as Sphinx names them (relative to book/, no suffix)."""
    toc = yaml.safe_load((REPO / "book" / "_toc.yml").read_text())
    pages = {toc["root"]}
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        pages |= {c["file"] for c in part["chapters"]}
    return pages


def broken_links(path: Path, repo: Path = REPO) -> list[str]:
    """What is wrong with the relative links of one markdown file, one line per problem."""
    problems = []
    in_book = (repo / "book") in path.parents
    pages = book_pages() if in_book else set()
    for n, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http(s):, mailto:, ...; anchors within the page
        file, _, anchor = target.partition("#")
        where = f"{path.relative_to(repo)}:{n}: {target}"
        resolved = (path.parent / file).resolve()
        try:
            rel = resolved.relative_to(repo).as_posix()
        except ValueError:
            problems.append(f"{where}: points outside the repository")
            continue
        if in_book and not resolved.suffix and (repo / "book") in resolved.parents:
            # a page of the book (a notebook the pipeline executes, or a markdown page)
            if resolved.relative_to(repo / "book").as_posix() not in pages:
                problems.append(f"{where}: no such page in book/_toc.yml")
            continue
        if any((rel + "/").startswith(g) for g in GENERATED):
            problems.append(f"{where}: points into what `dvc repro` writes ({rel}), not in a fresh clone")
            continue
        if not resolved.exists():
            problems.append(f"{where}: no such file or folder")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: no heading with the anchor #{anchor} in {rel}")
    return problems


@pytest.mark.parametrize("doc", documents(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(doc):
    assert doc.exists(), doc
    assert not broken_links(doc), "\n".join(broken_links(doc))


def test_the_readme_is_a_front_door():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    n = len(text.splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move details to docs/"
    # the two commands (.ci/run runs `make test`) and the one figure
    assert "make repro" in text and "make test" in text
    assert any(t.endswith("ladder.png") for _, t in links(REPO / "README.md"))


def test_the_landing_page_shows_the_ladder_first_and_lists_every_page():
    intro = REPO / "book" / "intro.md"
    found = links(intro)
    assert found and found[0][1].endswith("ladder.png"), f"first link or figure of intro.md: {found[:1]}"
    book = REPO / "book"
    targets = [(intro.parent / t.partition("#")[0]).resolve() for _, t in found
               if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]
    linked = {t.relative_to(book).as_posix() for t in targets if book in t.parents}
    missing = book_pages() - {"intro"} - linked
    assert not missing, f"pages of book/_toc.yml that book/intro.md does not list: {sorted(missing)}"


def test_the_checker_finds_dead_links(tmp_path):
    """The checks above can fail: a missing file, a missing anchor and a generated output."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## Real heading: `x.y`\n\n```\n# not a heading\n```\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md) [ok too](other.md#real-heading-xy) [web](https://example.org)\n"
        "[gone](missing.md) ![gone](figures/none.png)\n[bad anchor](other.md#not-a-heading)\n"
        "[comment anchor](other.md#not-a-heading-1) [generated](../outputs/ladder/ladder.png)\n"
        "`[in code](nowhere.md)`\n\n```bash\n[in a fence](nowhere.md)\n```\n")
    (tmp_path / "outputs" / "ladder").mkdir(parents=True)
    (tmp_path / "outputs" / "ladder" / "ladder.png").write_bytes(b"")
    problems = broken_links(page, repo=tmp_path)
    assert len(problems) == 5, problems
    assert {p.split(": ")[1] for p in problems} == {
        "missing.md", "figures/none.png", "other.md#not-a-heading", "other.md#not-a-heading-1",
        "../outputs/ladder/ladder.png"}
    assert slug("Configuration: `params.yaml`") == "configuration-paramsyaml"
    assert slug("The ablation matrix on DVC's queue") == "the-ablation-matrix-on-dvcs-queue"


def test_the_front_page_figure_is_the_one_the_ladder_stage_writes():
    """README and the book's landing page show `ladder.figure`, which the ladder stage declares as
    an output that git keeps (cache: false) and the book stage depends on."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    figure = params["ladder"]["figure"]
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert {"${ladder.figure}": {"cache": False}} in stages["ladder"]["outs"]
    assert "${ladder.figure}" in stages["book"]["deps"]
    assert f"]({figure})" in (REPO / "README.md").read_text()
    assert f"../{figure}" in (REPO / "book" / "intro.md").read_text()
    assert (REPO / figure).is_file()
