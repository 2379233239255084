"""The package's imports flow one way, from the outside in, and close no cycle.

Every import counts, at the top of a module or inside a function, so that a lazy import cannot hide
a cycle. The wings, innermost first, are listed in LAYERS (docs/architecture.md explains the cut):
a module may import its own wing and the wings inside it, never one further out. The core stays
free of torch and the HF libraries, so `itertrain status` and the planner run without them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "itertrain"
LAYERS = ["core", "runtime", "mirror", "tasks", "phases", "training", "trackers", "app"]
HEAVY = {"torch", "transformers", "accelerate", "peft", "trl", "datasets", "deepspeed", "safetensors"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The itertrain modules (and third-party top-level packages) that module `name` imports."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:  # `from pkg import module` imports the module
                target = f"{base}.{alias.name}"
                found.add(target if target in MODULES else base)
    return {m for m in found if m in MODULES or not m.startswith("itertrain")}


def wing(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_lies_in_a_wing():
    loose = [m for m in MODULES if wing(m) is None and m not in ("itertrain", "itertrain.__main__")]
    assert not loose, f"modules outside the wings {LAYERS}: {loose}"


def test_imports_flow_inward():
    wrong = []
    for name in MODULES:
        here = wing(name)
        for target in imports(name):
            there = wing(target)
            if here and there and LAYERS.index(there) > LAYERS.index(here):
                wrong.append(f"{name} ({here}) imports {target} ({there})")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = {m: {t for t in imports(m) if t in MODULES and t != m} for m in MODULES}
    # Tarjan's strongly connected components: any with two or more modules is a cycle
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_core_is_light():
    heavy = [f"{m} imports {t}" for m in MODULES if wing(m) == "core"
             for t in imports(m) if t.split(".")[0] in HEAVY]
    assert not heavy, heavy


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    """The test itself fails on a new import against the layering (it must not pass vacuously)."""
    assert "itertrain.app.config" in imports("itertrain.app.startup")
    assert wing("itertrain.core.commit") == "core" and wing("itertrain.app.loop") == "app"
    bad = tmp_path / "itertrain" / "core"
    bad.mkdir(parents=True)
    (bad / "x.py").write_text("def f():\n    from itertrain.app import loop\n")
    monkeypatch.setitem(MODULES, "itertrain.core.x", bad / "x.py")
    assert "itertrain.app.loop" in imports("itertrain.core.x")
    with pytest.raises(AssertionError, match="core.x"):
        test_imports_flow_inward()


# Not failures: a stop request and an abandoned verification unwind the stack to where they are handled.
CONTROL_FLOW = {"itertrain.runtime.stop.Stopped", "itertrain.tasks.pool.Abandoned"}


def test_one_error_family_defined_in_one_place():
    """Every exception class is in core/errors.py and carries its exit status; the command line maps it
    in one place; nothing catches one of ours to raise another of ours."""
    from itertrain.core import errors

    defined = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception")) for b in node.bases):
                defined.append(f"{name}.{node.name}")
    assert set(defined) - CONTROL_FLOW == {f"itertrain.core.errors.{c}" for c in vars(errors)
                                           if isinstance(getattr(errors, c), type) and c.endswith("Error")
                                           or c == "AdapterMismatch"}
    for c in vars(errors).values():
        if isinstance(c, type) and issubclass(c, Exception):
            assert issubclass(c, errors.ItertrainError) and c.exit_code in (1, 2), c
    ours = {c for c in vars(errors) if isinstance(getattr(errors, c), type)}
    translations, mapped = [], []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = {getattr(n, "id", getattr(n, "attr", None)) for n in ast.walk(node.type)}
                raised = {getattr(n.exc.func, "id", getattr(n.exc.func, "attr", None)) for n in ast.walk(node)
                          if isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call)}
                if caught & ours and (raised & ours) - caught:
                    translations.append(f"{name}:{node.lineno} catches {sorted(caught & ours)}, raises "
                                        f"{sorted(raised & ours)}")
                if "ItertrainError" in caught:
                    mapped.append(name)
    assert not translations, translations
    assert mapped == ["itertrain.app.cli"]
