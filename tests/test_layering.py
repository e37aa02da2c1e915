"""No import runs upward (docs/design.md): every import in the package, lazy ones included.

Layers, low to high: errors, io_utils and native_build; sampling.base (the processor protocol); formats; sampling;
model; backends; export; train; compose; cli.  A module may import its own layer and the layers
below it.  ``__main__`` modules are entry points and may import the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import rwkv_music

PACKAGE = Path(rwkv_music.__file__).parent

# layer of each top-level part (the package root re-exports the public names lazily: top)
RANK = {
    "errors": 0,
    "io_utils": 0,
    "native_build": 0,
    "sampling.base": 1,
    "formats": 2,
    "tokenizers": 2,
    "sampling": 3,
    "model": 4,
    "assets": 4,
    "backends": 5,
    "export": 6,
    "train": 7,
    "compose": 8,
    "cli": 9,
    "": 10,
}


def part_of(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return ""
    if parts[:2] == ["sampling", "base"]:
        return "sampling.base"
    return parts[0]


def imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "rwkv_music":
                version_only = all(a.name == "__version__" for a in node.names)
                found.append((node.lineno, "rwkv_music" if version_only else "rwkv_music."))
            elif node.module.startswith("rwkv_music."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("rwkv_music.")]
    return found


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        if path.name == "__main__.py" or module == "rwkv_music":
            continue
        mine = part_of(module)
        for line, target in imports_of(path):
            if target == "rwkv_music":  # the version string only
                continue
            theirs = part_of(target) if target != "rwkv_music." else ""
            if RANK[theirs] > RANK[mine]:
                upward.append(f"{rel}.py:{line} ({mine}) imports {target} ({theirs or 'rwkv_music'})")
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_every_part_has_a_layer() -> None:
    parts = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    parts -= {"__init__", "__main__", "__pycache__", "py.typed"}
    assert parts <= set(RANK), parts - set(RANK)
