"""The package's shape: one home per shared part, imports that only point down, and code
dependencies (dvc.yaml deps, Ray run names) derived from the imports instead of kept by hand."""
import ast
import typing

import pytest
import yaml

from conftest import REPO
from pipeline import codedeps, params
from pipeline.data import synthetic

PACKAGE = REPO / "pipeline"
ALL_FILES = sorted(PACKAGE.rglob("*.py"))


def _name(path) -> str:
    return str(path.relative_to(REPO))


def test_the_import_graph_has_no_circle():
    graph = {path: codedeps.direct_imports(path) for path in ALL_FILES}
    state: dict = {}  # path -> "open" while on the current path, "done" after

    def visit(path, trail):
        state[path] = "open"
        for nxt in graph.get(path, ()):
            if state.get(nxt) == "open":
                cycle = trail[trail.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(_name(p) for p in cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[path] = "done"

    for path in ALL_FILES:
        if path not in state:
            visit(path, [path])


@pytest.mark.parametrize("package", ["irn", "seg", "nets", "ops", "data", "clip"])
def test_lower_packages_import_nothing_from_cam(package):
    offenders = [(_name(f), _name(d)) for f in (PACKAGE / package).glob("*.py")
                 for d in codedeps.project_files(f) if d.parent == PACKAGE / "cam"]
    assert offenders == []


@pytest.mark.parametrize("module", ["pipeline.params", "pipeline.io", "pipeline.metrics", "pipeline.layout", "pipeline.errors"])
def test_the_foundation_imports_only_the_foundation(module):
    foundation = {PACKAGE / f"{name}.py" for name in ("params", "io", "metrics", "layout", "errors")}
    assert set(codedeps.project_files(module)) <= foundation


@pytest.mark.parametrize("module", ["pipeline.cam.losses", "pipeline.cam.train", "pipeline.irn.affinity",
                                    "pipeline.irn.random_walk", "pipeline.ops.crf", "pipeline.nets.cam_net",
                                    "pipeline.nets.boundary", "pipeline.nets.deeplab", "pipeline.scoring"])
def test_the_methods_maths_never_imports_ray_or_mlflow(module):
    for path in codedeps.project_files(module):
        imported = {n.split(".")[0] for n in codedeps._imported_names(ast.parse(path.read_text()))}
        assert not imported & {"ray", "mlflow"}, f"{_name(path)} imports {imported & {'ray', 'mlflow'}}"


def test_a_ray_run_is_named_by_every_module_its_worker_imports():
    files = {_name(p) for p in codedeps.project_files("pipeline.cam.ray_train")}
    # the net, the training set, the held-out scorer and the CLIP that loads inside a function
    assert {"pipeline/nets/cam_net.py", "pipeline/data/training_sets.py", "pipeline/scoring.py",
            "pipeline/clip/model.py", "pipeline/train_loop.py"} <= files
    irn = {_name(p) for p in codedeps.project_files("pipeline.irn.train")}
    assert {"pipeline/nets/backbone.py", "pipeline/nets/cam_net.py", "pipeline/nets/boundary.py"} <= irn
    assert codedeps.code_digest("pipeline.irn.train") != codedeps.code_digest("pipeline.seg.train")


def test_dvc_yaml_deps_cover_every_module_each_stage_imports():
    stages = codedeps.stage_scripts(yaml.safe_load((REPO / "dvc.yaml").read_text()))
    assert len(stages) == 13
    assert {name: codedeps.uncovered_deps(script, deps) for name, (script, deps) in stages.items()} == \
        {name: [] for name in stages}
    # and they are exactly the derived lists (no stale entry either): `python -m pipeline.codedeps`
    text = (REPO / "dvc.yaml").read_text()
    assert codedeps.with_derived_deps(text) == text


def test_a_planted_omission_in_dvc_yaml_is_found_and_rewritten():
    text = (REPO / "dvc.yaml").read_text()
    planted = text.replace("      - pipeline/nets/boundary.py\n", "", 1)  # the first stage that lists it: train_irn
    assert planted != text
    stages = codedeps.stage_scripts(yaml.safe_load(planted))
    missing = {name: codedeps.uncovered_deps(script, deps) for name, (script, deps) in stages.items()}
    assert missing["train_irn"] == ["pipeline/nets/boundary.py"]
    assert sum(map(len, missing.values())) == 1
    assert codedeps.with_derived_deps(planted) == text


def test_the_schema_accepts_exactly_the_kinds_the_world_draws():
    assert typing.get_args(params.ObjectKind) == synthetic.OBJECT_KINDS
    assert typing.get_args(params.BackgroundKind) == synthetic.BACKGROUND_KINDS


def test_no_schema_class_shares_a_name_with_a_runtime_class():
    schema = {name for name, value in vars(params).items() if isinstance(value, type) and issubclass(value, params.Section)}
    runtime = set()
    for path in ALL_FILES:
        if path.name != "params.py":
            runtime |= {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)}
    assert schema & runtime == set()
