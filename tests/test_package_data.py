"""A wheel must carry every C source the package builds at run time (a missing one only shows outside an
editable install, as a kernel that silently falls back to numpy)."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_data_globs_cover_every_c_source_and_header() -> None:
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; the one list, read as a Python literal)
    globs = ast.literal_eval(re.search(r"\[tool\.setuptools\.package-data\]\s*rwkv_music\s*=\s*(\[[^\]]*\])", text)[1])
    package = ROOT / "rwkv_music"
    sources = [p.relative_to(package).as_posix() for p in package.rglob("*") if p.suffix in (".c", ".h")]
    assert len(sources) >= 10
    missing = [s for s in sources if not any(fnmatch.fnmatch(s, g) for g in globs)]
    assert not missing, f"add these to [tool.setuptools.package-data] in pyproject.toml: {missing}"
