"""Every ```python block in docs/ runs, so the text cannot drift from the code (as the annotated transformer and
the Triton tutorials do it).

A small collector of our own: `python_blocks` finds the fenced blocks whose info string is exactly ``python``;
`run_markdown` executes one file's blocks in order, in one namespace, in a fresh subprocess with the repository
root as working directory and, without a GPU, ``TRITON_INTERPRET=1`` (kernel snippets run on the CPU). Each
block is compiled with the markdown file's name and padded so that its line numbers are the file's: a failing
snippet's traceback points at ``docs/03-attention.md``, line N. Other languages (bash, text) are shown, not run.

    python -m tests.test_docs docs/01-characters.md      # run one chapter by hand
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CHAPTERS = sorted(DOCS.glob("[0-9][0-9]-*.md"))
FENCE = re.compile(r"^(\s*)```(.*)$")  # an opening fence and its info string
CLOSE = re.compile(r"^\s*```\s*$")


def python_blocks(text: str, name: str = "<markdown>") -> list[tuple[int, str]]:
    """The ```python blocks of a markdown text as ``(first code line, 1-based; code)``, in order.

    Raises ValueError for an unclosed fence, or a python block indented (inside a list), which a reader would
    take for runnable code but a collector reading only top-level fences would silently skip."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, info = match.group(1), match.group(2).strip()
        end = next((j for j in range(i + 1, len(lines)) if CLOSE.match(lines[j])), None)
        if end is None:
            raise ValueError(f"{name}:{i + 1}: code fence never closed")
        if info == "python":
            if indent:
                raise ValueError(f"{name}:{i + 1}: indented python block (move it to the top level so it runs)")
            blocks.append((i + 2, "\n".join(lines[i + 1:end])))
        i = end + 1
    return blocks


def run_markdown(path: Path, timeout: float = 600.0) -> subprocess.CompletedProcess:
    """Run the python blocks of `path` in a fresh interpreter (see the module docstring); returns the process."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MPLBACKEND="Agg")
    if not torch.cuda.is_available():  # as tests/conftest.py: kernels run in the interpreter when there is no GPU
        env.setdefault("TRITON_INTERPRET", "1")
    return subprocess.run([sys.executable, "-m", "tests.test_docs", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def main(path: str) -> int:
    """Execute the python blocks of one markdown file in order in one namespace; 1 and a traceback on failure."""
    text = Path(path).read_text(encoding="utf-8")
    namespace: dict = {"__name__": "__docs__"}
    for line, code in python_blocks(text, path):
        try:
            exec(compile("\n" * (line - 1) + code, path, "exec"), namespace)
        except Exception:
            traceback.print_exc()
            print(f"{path}:{line}: this block failed", file=sys.stderr)
            return 1
    print(f"{path}: {len(python_blocks(text, path))} blocks ran")
    return 0


def test_seven_chapters_each_with_code():
    assert len(CHAPTERS) == 7, [c.name for c in CHAPTERS]
    for chapter in CHAPTERS:
        assert python_blocks(chapter.read_text(encoding="utf-8"), chapter.name), f"{chapter.name} runs no code"


# Parsing every page here also refuses, at collection, a page with an unclosed fence or an indented python block.
PAGES_WITH_CODE = [p for p in sorted(DOCS.glob("*.md")) if python_blocks(p.read_text(encoding="utf-8"), p.name)]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: p.name)
def test_docs_page_runs(page):
    run = run_markdown(page)
    assert run.returncode == 0, f"{page.name} failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"


def test_broken_snippet_fails(tmp_path):
    """The collector is not a formality: a wrong claim in a later block fails, and the report names its line;
    the blocks share one namespace; bash blocks are not run."""
    page = tmp_path / "broken.md"
    page.write_text("# A chapter\n\n```python\nx = 2\n```\n\n```bash\nexit 1\n```\n\ntext\n\n```python\n"
                    "assert x + x == 5, 'arithmetic'\n```\n", encoding="utf-8")
    run = run_markdown(page)
    assert run.returncode == 1
    assert f'File "{page}", line 14' in run.stderr and "AssertionError: arithmetic" in run.stderr
    page.write_text(page.read_text(encoding="utf-8").replace("x + x == 5", "x + x == 4"), encoding="utf-8")
    assert run_markdown(page).returncode == 0


def test_fences_are_read_strictly():
    assert python_blocks("```python\na = 1\n```\n```py\nb\n```\n```python\nc = 2\n```") == [(2, "a = 1"), (8, "c = 2")]
    with pytest.raises(ValueError, match=":1: code fence never closed"):
        python_blocks("```python\na = 1\n")
    with pytest.raises(ValueError, match="indented python block"):
        python_blocks("1. step\n\n   ```python\n   a = 1\n   ```\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
