"""What project code a stage or a training run really depends on, read from its imports.

The import graph is read from the source (every `import pipeline...` and `from pipeline...
import ...`, those inside functions included), so it is the same whether or not a lazy import
has run yet. Derived from it instead of listed by hand: dvc.yaml's code deps of every stage
(`python -m pipeline.codedeps` writes them; tests/test_layout.py fails while they differ), the
code digest in the name of a Ray Train run (a changed module starts a fresh run instead of
resuming an old checkpoint), in the resume stamps of the per-image stages and in the tiny CLIP's
takeover check.

Modules that cannot change what a stage writes or what a net learns are left out (NEUTRAL):
MLflow tracking, the headline figures it and the CLI print, the wrapper that prints a stage's
errors, the allocator's setting (memory kept, the same numbers to the bit), the CLI and this
module. Editing them reruns nothing.
"""
from __future__ import annotations

import ast
import hashlib
import re
from functools import lru_cache
from pathlib import Path

PACKAGE = "pipeline"
PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
NEUTRAL = frozenset(PACKAGE_DIR / name for name in ("tracking.py", "stage.py", "allocator.py", "cli.py", "codedeps.py", "headline.py"))


def module_file(name: str) -> Path | None:
    """The source file of project module `name` (a package's __init__.py), None if not one."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(tree: ast.AST) -> set[str]:
    """Module names an AST imports: `from a import b` yields a.b too, since b may be a module."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@lru_cache(maxsize=None)
def direct_imports(path: Path) -> frozenset[Path]:
    """The project files that the file at `path` imports directly, with the packages they sit in
    (importing pipeline.a.b runs pipeline/a/__init__.py)."""
    files = set()
    for name in _imported_names(ast.parse(path.read_text(), str(path))):
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            found = module_file(".".join(parts[:depth]))
            if found is not None:
                files.add(found)
    files.discard(path)
    return frozenset(files)


def project_files(*entries: str | Path) -> list[Path]:
    """Every project file that the entry files or modules import, transitively, entries included
    (sorted); NEUTRAL modules are neither listed nor followed. Empty package __init__ files are
    left out: they hold no code to depend on."""
    todo = [Path(e).resolve() if isinstance(e, Path) or str(e).endswith(".py") else module_file(e) for e in entries]
    if None in todo:
        raise ValueError(f"not a project module: {entries[todo.index(None)]}")
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path not in seen and path not in NEUTRAL:
            seen.add(path)
            todo.extend(direct_imports(path))
    return sorted(p for p in seen if p.stat().st_size > 0)


def code_digest(*entries: str | Path) -> str:
    """sha256 over the paths and bytes of `project_files(*entries)`."""
    digest = hashlib.sha256()
    for path in project_files(*entries):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def uncovered_deps(stage_script: Path, deps: list[str], root: Path = ROOT) -> list[str]:
    """The project files that `stage_script` imports (transitively) and that no entry of `deps`
    (files or folders, relative to `root`) covers, as paths relative to `root`."""
    listed = [(root / d).resolve() for d in deps]
    missing = []
    for path in project_files(stage_script):
        if not any(path == d or d in path.parents for d in listed):
            missing.append(str(path.relative_to(root)))
    return missing


def stage_scripts(dvc_yaml: dict) -> dict[str, tuple[Path, list[str]]]:
    """stage name -> (its script, its deps) for every stage of a parsed dvc.yaml whose command
    runs `python stages/<name>.py` (a foreach stage's template once)."""
    found = {}
    for name, stage in dvc_yaml["stages"].items():
        body = stage.get("do", stage)
        words = body["cmd"].split()
        script = next((w for w in words if w.startswith("stages/") and w.endswith(".py")), None)
        if script is not None:
            found[name] = (ROOT / script, [str(d) for d in body.get("deps", [])])
    return found


def code_deps(stage_script: Path) -> list[str]:
    """The project files a stage's dvc.yaml deps must list besides its script (relative paths)."""
    return [str(p.relative_to(ROOT)) for p in project_files(stage_script) if p != stage_script.resolve()]


def with_derived_deps(dvc_yaml_text: str) -> str:
    """dvc.yaml's text with each stage's code deps derived: the `- pipeline/...` entries that
    follow a `- stages/<name>.py` entry become exactly what that script imports."""
    lines, out, i = dvc_yaml_text.splitlines(keepends=True), [], 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        match = re.match(r"^(\s*)- (stages/\w+\.py)\s*$", line)
        if match:
            indent = match.group(1)
            while i < len(lines) and lines[i].startswith(f"{indent}- {PACKAGE}/"):
                i += 1
            out += [f"{indent}- {dep}\n" for dep in code_deps(ROOT / match.group(2))]
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    """Write the derived code deps into dvc.yaml; with --check, only say whether it is current."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.codedeps", description=main.__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    path = ROOT / "dvc.yaml"
    text = path.read_text()
    derived = with_derived_deps(text)
    if derived == text:
        print(f"{path.name}: code deps are current")
        return 0
    if args.check:
        print(f"{path.name}: code deps differ from the imports; run python -m pipeline.codedeps")
        return 1
    path.write_text(derived)
    print(f"{path.name}: code deps rewritten from the imports")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
