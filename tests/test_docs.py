"""Every "DESIGN.md §N" cited in the code, tests, benchmarks and docs names a section that
docs/DESIGN.md has (a "## N." heading), and the code cites it by its path."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs" / "DESIGN.md"
SEARCHED = ("kernels", "reference", "spiffy_triton", "benchmarks", "tests", "scripts", "docs")
SKIPPED = ("results",)  # recorded benchmark output, not prose
CITATION = re.compile(r"DESIGN\.md((?:[ ,]+(?:and )?§\d+[a-z]?)*)")
SECTION = re.compile(r"§(\d+[a-z]?)")
HEADING = re.compile(r"^## (\d+[a-z]?)\. ", re.MULTILINE)


def design_sections(text: str) -> set[str]:
    return set(HEADING.findall(text))


def cited_sections(text: str) -> list[tuple[str, list[str]]]:
    """(the citation as written, the sections it names) for each "DESIGN.md" in `text`."""
    return [(m.group(0), SECTION.findall(m.group(1))) for m in CITATION.finditer(text)]


def source_files():
    for folder in SEARCHED:
        for path in sorted((REPO / folder).rglob("*")):
            if path == Path(__file__).resolve():
                continue  # this file's own examples
            if path.suffix in (".py", ".md", ".sh") and not set(path.parts) & set(SKIPPED):
                yield path
    yield REPO / "README.md"


def test_the_checker_reads_citations_and_headings():
    text = "see docs/DESIGN.md §2, §6 and DESIGN.md §7b; also docs/DESIGN.md alone"
    assert cited_sections(text) == [
        ("DESIGN.md §2, §6", ["2", "6"]),
        ("DESIGN.md §7b", ["7b"]),
        ("DESIGN.md", []),
    ]
    assert design_sections("## 1. One\n### 2. not a section\n## 10. Ten\n") == {"1", "10"}


def test_every_cited_design_section_exists():
    sections = design_sections(DESIGN.read_text(encoding="utf-8"))
    assert sections == {str(n) for n in range(1, len(sections) + 1)}, sorted(sections)
    missing, unnumbered = [], []
    cited = 0
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        for line_no, line in enumerate(text.splitlines(), 1):
            for written, numbers in cited_sections(line):
                where = f"{path.relative_to(REPO)}:{line_no}"
                cited += len(numbers)
                missing += [f"{where}: §{n}" for n in numbers if n not in sections]
                if "section" in line[line.index(written) :][: len(written) + 10]:
                    unnumbered.append(f"{where}: {line.strip()}")
    assert cited >= 18, f"only {cited} citations found: the pattern no longer matches"
    assert not missing, "cited sections docs/DESIGN.md does not have:\n" + "\n".join(missing)
    assert not unnumbered, "cite as 'docs/DESIGN.md §N':\n" + "\n".join(unnumbered)


def test_code_cites_design_by_its_path():
    loose = []
    for path in source_files():
        if path.suffix != ".py":
            continue
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in re.finditer(r"(\S*)DESIGN\.md", line):
                if not match.group(1).endswith("docs/"):
                    loose.append(f"{path.relative_to(REPO)}:{line_no}: {line.strip()}")
    assert not loose, "cite docs/DESIGN.md by its path:\n" + "\n".join(loose)
