"""The README's promises: its Python snippet runs as printed, and its links lead somewhere."""

import gzip
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from encdec import data

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"


def python_snippet() -> str:
    (snippet,) = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    return snippet


@pytest.fixture(scope="module")
def multi30k_head(tmp_path_factory, multi30k_dir) -> Path:
    """The first 2,000 training and 100 validation and test pairs of Multi30k de-en: enough for
    the snippet's smoke run, in a fifth of the time the whole corpus takes to read and score."""
    folder = tmp_path_factory.mktemp("multi30k_head")
    for split, count in (("train", 2000), ("val", 100), ("test_2016_flickr", 100)):
        for lang in ("de", "en"):
            name = f"{split}.{lang}.gz"
            lines = data.read_lines(multi30k_dir / name)[:count]
            text = "".join(line + "\n" for line in lines)
            (folder / name).write_bytes(gzip.compress(text.encode()))
    return folder


def test_the_python_snippet_runs_as_printed_where_encdec_data_names_the_data(
    tmp_path, multi30k_head
):
    shutil.copytree(REPO_ROOT / "configs", tmp_path / "configs")  # the snippet's working folder
    env = {**os.environ, "ENCDEC_DATA": str(multi30k_head)}
    result = subprocess.run(
        [sys.executable, "-c", python_snippet()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.splitlines()) == 4  # three translations, then the best's tokens
    assert (tmp_path / "runs" / "smoke" / "best.pt").is_file()


def test_every_relative_link_leads_to_a_file_and_the_tutorial_is_one():
    links = re.findall(r"\]\(([^)]+)\)", README.read_text(encoding="utf-8"))
    relative = [link.split("#")[0] for link in links if "://" not in link]
    assert "docs/tutorial.md" in relative
    assert [link for link in relative if not (REPO_ROOT / link).is_file()] == []


def test_the_module_table_lists_every_module():
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Where things are") :]
    listed = set(re.findall(r"^\| `(\w+\.py)` \|", table, re.M))
    modules = {path.name for path in (REPO_ROOT / "src" / "encdec").glob("*.py")}
    assert listed == modules - {"__init__.py", "__main__.py"}
