"""docs/: every section a comment cites exists, and the design page names real modules."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATS_DOC = ROOT / "docs" / "formats.md"
SCANNED = ("rwkv_music", "tests", "benchmarks", "examples", "scripts")
SUFFIXES = {".py", ".md", ".c", ".h"}
# "docs/formats.md A7", "docs/formats.md C3, C4" and the older "FORMATS.md A7" / "FORMATS A7"
CITATION = re.compile(r"(?:docs/formats\.md|(?<![\w/.])FORMATS(?:\.md)?),? ?§?([A-F]\d*)\b")


def _cited_labels() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    paths = [ROOT / "README.md"] + [p for d in SCANNED if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*")]
    for path in paths:
        if path.suffix not in SUFFIXES or not path.is_file() or path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for label in CITATION.findall(line):
                found.setdefault(label, []).append(f"{path.relative_to(ROOT)}:{number}")
    return found


def _headed_labels() -> set[str]:
    return set(re.findall(r"^#{2,3} ([A-F]\d*)\. ", FORMATS_DOC.read_text(), flags=re.MULTILINE))


def test_every_cited_formats_section_is_a_heading_of_docs_formats_md() -> None:
    cited, headed = _cited_labels(), _headed_labels()
    assert cited, "no citation found: the pattern no longer matches the code"
    missing = {label: where[:3] for label, where in cited.items() if label not in headed}
    assert not missing, f"sections cited but absent from docs/formats.md: {missing}"


def test_formats_md_sections_run_in_order_without_gaps() -> None:
    labels = re.findall(r"^#{2,3} ([A-F]\d*)\. ", FORMATS_DOC.read_text(), flags=re.MULTILINE)
    letters = [label for label in labels if len(label) == 1]
    assert letters == ["A", "B", "C", "D", "E", "F"]
    for letter in "ACD":
        numbers = [int(label[1:]) for label in labels if label[0] == letter and len(label) > 1]
        assert numbers == list(range(1, len(numbers) + 1)), (letter, numbers)


def test_design_md_names_modules_that_exist() -> None:
    text = (ROOT / "docs" / "design.md").read_text()
    named = set(re.findall(r"`((?:formats|sampling|model|backends|compose|cli)/[\w/]+\.py)`", text))
    assert named, "design.md names no module"
    missing = sorted(name for name in named if not (ROOT / "rwkv_music" / name).is_file())
    assert not missing, f"design.md names modules that do not exist: {missing}"
