"""docs/math.md is the page code comments cite: every citation must point at a real section."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MATH = ROOT / "docs" / "math.md"
# The notes the comments used to cite lived outside the repository (spelled in two parts so
# this file does not cite them itself).
OLD_NOTES = "spec_math" + ".md"
# "docs/math.md section 4", "docs/math.md section 10.2", also across a docstring line break.
CITATION = re.compile(r"docs/math\.md`?,?\s+(?:#\s*)?section\s+(\d+(?:\.\d+)?)")
HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)?)\.?\s", re.MULTILINE)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".txt", ".sh"}
SKIP_DIRS = {"__pycache__", "node_modules", "outputs", "logs", "wandb"}


def _text_files():
    for folder, dirs, files in os.walk(ROOT):  # does not follow links (.venv is one)
        # .git, .venv and other hidden or generated folders are not the project's text
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix in TEXT_SUFFIXES or name == "Makefile":
                yield path, path.read_text(encoding="utf-8", errors="replace")


def test_math_page_has_numbered_sections():
    sections = set(HEADING.findall(MATH.read_text(encoding="utf-8")))
    assert {str(k) for k in range(1, 12)} <= sections


def test_no_file_cites_the_old_notes_and_every_cited_section_exists():
    sections = set(HEADING.findall(MATH.read_text(encoding="utf-8")))
    old, missing, cited = [], [], 0
    for path, text in _text_files():
        name = str(path.relative_to(ROOT))
        if OLD_NOTES in text:
            old.append(name)
        for match in CITATION.finditer(text):
            cited += 1
            if match.group(1) not in sections:
                missing.append(f"{name}: section {match.group(1)}")
    assert not old, f"files citing {OLD_NOTES} (cite docs/math.md instead): {old}"
    assert not missing, f"docs/math.md has no such section: {missing}"
    assert cited > 0  # the pattern still matches the way comments cite the page


def test_tests_named_in_the_math_page_exist():
    named = set(re.findall(r"`(test_\w+)`", MATH.read_text(encoding="utf-8")))
    defined = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
    assert named and not named - defined, f"no such tests: {sorted(named - defined)}"
