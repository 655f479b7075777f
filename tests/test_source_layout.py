"""The C sources keep their layers (DESIGN.md, LAYOUT.md): core/ knows no vendor, interpose/
knows no vendor and no quota, and no header include forms a circle. Read from the source tree."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"
INCLUDE = Path(__file__).resolve().parent.parent / "include"
LAYERS = ("core", "interpose", "cuda", "acl")


def _includes(path: Path) -> list[str]:
    return re.findall(r'^\s*#\s*include\s+"([^"]+)"', path.read_text(), flags=re.M)


def _sources() -> dict[str, Path]:
    """Every project file a quoted include can name, by its bare name."""
    found = {p.name: p for layer in LAYERS for p in (CSRC / layer).iterdir()}
    found["flexai.h"] = INCLUDE / "flexai.h"
    return found


def _layer(path: Path) -> str:
    return path.parent.name if path.parent.parent == CSRC else "include"


@pytest.mark.parametrize("layer, allowed", [
    ("core", {"core", "include"}),
    ("interpose", {"interpose", "core", "include"}),
    ("cuda", {"cuda", "interpose", "core", "include"}),
    ("acl", {"acl", "interpose", "core", "include"}),
])
def test_each_layer_includes_only_what_it_may_know(layer: str, allowed: set[str]) -> None:
    files = _sources()
    for src in sorted((CSRC / layer).iterdir()):
        if src.suffix not in (".c", ".h", ".def"):
            continue
        for name in _includes(src):
            assert name in files, f"{src.name} includes unknown {name!r}"
            assert _layer(files[name]) in allowed, (
                f"{layer}/{src.name} includes {_layer(files[name])}/{name}")
    if layer in ("core", "interpose"):
        text = "\n".join(p.read_text() for p in (CSRC / layer).iterdir())
        text = re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)  # code, not comments
        assert not re.search(r"\bCU(result|stream|event|context)\b|\bcu[A-Z]\w+\(", text), (
            f"{layer}/ mentions the CUDA API")
        assert not re.search(r"\bacl(rt|op|nn|mdl)?[A-Z]\w*\b|\baclError\b", text), (
            f"{layer}/ mentions the ACL API")


def test_no_include_circles() -> None:
    files = _sources()
    graph = {name: [i for i in _includes(path) if i in files] for name, path in files.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 2:
            return
        assert state.get(node) != 1, "include circle: " + " -> ".join(trail + [node])
        state[node] = 1
        for nxt in graph[node]:
            visit(nxt, trail + [node])
        state[node] = 2

    for name in graph:
        visit(name, [])
