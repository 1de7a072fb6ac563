"""The fenced blocks of README.md and docs/, as the tests read them.

A block whose first line is ``# NAME`` (a file name: ``my_models.py``, ``quickstart.sh``) is an example a test runs:
``doc_example(NAME)`` returns it without that line. A name is unique across README.md and docs/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNABLE = ("python", "yaml", "bash")  # the languages a named block may be in


def doc_files() -> list[Path]:
    """README.md and every page of docs/, the documentation a user reads."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    info: str  # the fence's language: python, yaml, bash, text, or "" when none is given
    text: str  # the content, dedented by the fence's own indentation

    @property
    def name(self) -> str | None:
        """NAME when the first line is ``# NAME`` (one word), else None."""
        first = self.text.split("\n", 1)[0].strip()
        if first.startswith("# ") and len(first.split()) == 2:
            return first[2:]
        return None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order (fences may be indented, as inside a list)."""
    found: list[Block] = []
    opened: tuple[int, str, int] | None = None  # (line, info, indent)
    body: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.lstrip()
        if opened is None:
            if stripped.startswith("```"):
                opened = (number, stripped[3:].strip(), len(line) - len(stripped))
                body = []
        elif stripped == "```":
            found.append(Block(path, opened[0], opened[1], "".join(body)))
            opened = None
        else:
            body.append(line[opened[2] :] + "\n" if line[: opened[2]].strip() == "" else line + "\n")
    if opened is not None:
        raise AssertionError(f"{path.relative_to(ROOT)}:{opened[0]}: a fence that is never closed")
    return found


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in blocks(path)]


def doc_example(name: str) -> str:
    """The block of README.md or docs/ whose first line is ``# NAME``, without that line."""
    found = [b for b in all_blocks() if b.info in RUNNABLE and b.name == name]
    if len(found) != 1:
        where = ", ".join(b.where for b in found) or "nowhere"
        raise AssertionError(f"README.md and docs/ must hold one example block starting with '# {name}', found {where}")
    return found[0].text.split("\n", 1)[1]
