"""The Python package's structure: no import cycles between its modules, bindings that import
nothing of flexai, an `import flexai` that loads nothing native, and no restated contract.

Reads the sources (ASTs) of the package that is imported, so it needs no built library except
for the contract checks at the end."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import flexai

PACKAGE = Path(flexai.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        out[_module_name(path)] = (path, ast.parse(path.read_text(), filename=str(path)))
    return out


SOURCES = _sources()


def _imports(module: str, tree: ast.Module, is_package: bool) -> set[str]:
    """The flexai modules `module` imports anywhere in its source (functions included: an
    import inside a function is still a dependency), relative imports resolved."""
    found: set[str] = set()
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & set(SOURCES)
            found |= submodules  # `from . import x` imports the submodule x ...
            if len(submodules) < len(node.names):  # ... other names come from `target` itself
                found.add(target)
    flexai_only = {m for m in found if m == "flexai" or m.startswith("flexai.")}
    # `import flexai.node.mps` names a submodule; keep the deepest name that is a module
    return {m for m in flexai_only if m in SOURCES} - {module}


def _graph() -> dict[str, set[str]]:
    return {name: _imports(name, tree, path.name == "__init__.py")
            for name, (path, tree) in SOURCES.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(graph.get(m, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_graph_sees_the_package():
    graph = _graph()
    assert {"flexai._ffi", "flexai.spec", "flexai.sim", "flexai.node.snapshot",
            "flexai.cli.run", "flexai.cli._output"} <= set(graph)
    assert "flexai._ffi" in graph["flexai.spec"]
    assert "flexai.node.snapshot" in graph["flexai.node.control"]  # a relative import


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_between_flexai_modules():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_bindings_import_no_flexai_module():
    _, tree = SOURCES["flexai._ffi"]
    assert _imports("flexai._ffi", tree, False) == set()
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert None not in names, "no `from . import ...` in the bindings"


def test_importing_flexai_loads_nothing():
    code = ("import sys, flexai; "
            "mods = sorted(m for m in sys.modules if m.startswith(('flexai.', 'cffi'))); "
            "maps = open('/proc/self/maps').read(); "
            "print(mods, 'libflexai' in maps)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[] False"


def test_lazy_names_resolve():
    for name in flexai.__all__:
        if name != "__version__":
            assert getattr(flexai, name) is not None, name
    assert flexai.ConfigError is flexai.BadValueError
    assert issubclass(flexai.ConfigError, ValueError)
    assert flexai.resize.__module__ == "flexai.node.control"


# ---- no restated contract ----------------------------------------------------------------------

def _string_constants() -> dict[str, set[str]]:
    """Every string literal of the package, per module, docstrings left out."""
    out: dict[str, set[str]] = {}
    for name, (_, tree) in SOURCES.items():
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef,
                                  ast.AsyncFunctionDef))
                and n.body and isinstance(n.body[0], ast.Expr)
                and isinstance(n.body[0].value, ast.Constant)}
        out[name] = {n.value for n in ast.walk(tree)
                     if isinstance(n, ast.Constant) and isinstance(n.value, str)
                     and id(n) not in docs}
    return out


def test_the_contract_is_not_restated_in_python():
    from flexai import sim
    from flexai._ffi import LIB_DIR_VARIABLE, constants
    from flexai.remote.wire import REMOTE_VARIABLES
    from flexai.spec import variables
    from flexai.torch import REEXEC_MARK

    table = variables()
    names = {v.name for v in table}
    options = {v.option for v in table if v.option}
    python_only = {LIB_DIR_VARIABLE, REEXEC_MARK} | set(constants()) | set(REMOTE_VARIABLES)
    # sim.py names the driver variables itself: it must not load the library (see its docstring)
    allowed = {"flexai.sim": set(sim.DRIVER_VARIABLES)}
    assert set(sim.DRIVER_VARIABLES) <= names
    for module, strings in _string_constants().items():
        flexai_names = {s for s in strings if s.startswith("FLEXAI_") and s.isupper()
                        and " " not in s and s != "FLEXAI_"}
        unknown = {s for s in flexai_names - names - python_only
                   if not s.startswith(sim.SIM_PREFIX) and not s.endswith("_")}
        assert not unknown, f"{module} uses FLEXAI_* names the library does not know: {unknown}"
        restated = (flexai_names & names) - allowed.get(module, set())
        assert not restated, f"{module} restates contract variables: {restated}"
        assert not strings & options, f"{module} restates options: {strings & options}"
