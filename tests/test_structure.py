"""The code's shape: imports point one way, the studies stay beside the core, Hydra and MLflow
stay at the edges, and every config default lives in one place."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import omegaconf
import pytest
from omegaconf import OmegaConf

from textclf import config, data, models
from textclf.cli import CONF_DIR
from textclf.tracking.models import INFERENCE_CODE

SRC = Path(config.__file__).parent


def module_name(path: Path) -> str:
    """`models/lstm.py` → `models.lstm`; a package's `__init__.py` → the package."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): ast.parse(p.read_text()) for p in SRC.rglob("*.py") if module_name(p)}
PACKAGES = {module_name(p) for p in SRC.rglob("__init__.py") if module_name(p)}
# what Hydra calls: the apps (the studies' in studies/commands.py) and the sweep's callbacks
ENTRY_POINTS = {"cli", "studies.commands", "sweep"}
GROUP_SCHEMA = {
    "data": None,  # per option: data/
    "tokenize": config.TokenizeConfig,
    "batching": config.BatchingConfig,
    "model": None,  # per option: models/
    "train": config.TrainConfig,
    "evaluate": config.EvaluateConfig,
    "tracking": config.TrackingConfig,
}
SELECTOR = {"batching": "strategy"}  # the key an option file chooses
# the groups whose option files start from a registered schema: the option's own config class
REGISTRIES: dict[str, dict] = {"model": models.REGISTRY, "data": data.REGISTRY}


def imported(name: str) -> set[str]:
    """What module `name` imports anywhere, as dotted names: textclf's own modules without the
    `textclf.` prefix (`from ..config import x` in `models.lstm` → `config`), others as written."""
    return {i for node in ast.walk(MODULES[name]) for i in import_names(name, node)}


def import_names(name: str, node: ast.AST) -> set[str]:
    """What one statement of module `name` imports, named as `imported` names it."""
    package = name.split(".") if name in PACKAGES else name.split(".")[:-1]
    if isinstance(node, ast.Import):
        return {alias.name.removeprefix("textclf.") for alias in node.names}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if not node.level:
        if node.module == "textclf":  # `from textclf import config`
            return {alias.name for alias in node.names}
        return {(node.module or "").removeprefix("textclf.")}
    base = package[: len(package) - node.level + 1]  # relative: textclf's own modules
    stem = ".".join([*base, *([node.module] if node.module else [])])
    return {stem} if node.module else {".".join([*base, alias.name]) for alias in node.names}


def project_imports(name: str) -> set[str]:
    """textclf's modules `name` imports (a name inside a module counts as the module)."""
    found = set()
    for dotted in imported(name):
        while dotted and dotted not in MODULES:
            dotted = dotted.rpartition(".")[0]
        if dotted and dotted != name and not name.startswith(dotted + "."):
            found.add(dotted)
    return found


def test_the_import_graph_of_src_has_no_cycle():
    graph = {name: project_imports(name) for name in MODULES}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != "open", f"import cycle: {' -> '.join([*path, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def is_study(dotted: str) -> bool:
    """A module of `studies/` (or the package itself), as `imported` names it."""
    return dotted == "studies" or dotted.startswith("studies.")


STUDIES = set(filter(is_study, MODULES))


def test_the_core_never_imports_the_studies_but_cli_inside_its_commands():
    """The studies (compare, baseline, tune, bench, gpu_check) import the core, never the other
    way: a fork can delete `studies/` and keep training. The entry point is the one exception,
    and only inside a function (the study's command), so importing it imports none of them."""
    assert {"studies.compare", "studies.baseline", "studies.tune", "studies.bench"} <= STUDIES
    assert "studies.gpu_check" in STUDIES
    core = set(MODULES) - STUDIES
    users = {n for n in core if any(map(is_study, project_imports(n)))}
    assert users <= {"cli"}, f"core modules importing textclf.studies: {sorted(users - {'cli'})}"
    cli = MODULES["cli"]
    studies = [n for n in ast.walk(cli) if any(map(is_study, import_names("cli", n)))]
    assert studies, "cli.py runs the study commands: it imports textclf.studies somewhere"
    at_import = [n.lineno for n in studies if not inside_a_function(cli, n)]
    assert at_import == [], f"cli.py imports textclf.studies at import time (lines {at_import})"


def inside_a_function(tree: ast.Module, target: ast.AST) -> bool:
    """Whether `target` lies in the body of a function (at any depth) of `tree`."""
    functions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
    bodies = (node for node in ast.walk(tree) if isinstance(node, functions))
    return any(target is inner for body in bodies for inner in ast.walk(body) if inner is not body)


def test_only_tracking_imports_mlflow_and_only_entry_points_see_hydra_configs():
    mlflow_users = {n for n in MODULES if any(i.startswith("mlflow") for i in imported(n))}
    # the tracking package, and the model file MLflow loads by path
    assert {n.split(".")[0] for n in mlflow_users} == {"tracking", "mlflow_model"}
    dictconfig_users = {
        n
        for n, t in MODULES.items()
        if "DictConfig" in {getattr(x, "id", None) for x in ast.walk(t)}
    }
    assert dictconfig_users <= ENTRY_POINTS | {"config"}  # config turns it into dataclasses


def carried_modules() -> set[str]:
    """The modules of `INFERENCE_CODE`, the package's part the logged MLflow model carries."""
    return {
        n
        for n in MODULES
        for part in INFERENCE_CODE
        if n == part.removesuffix(".py") or n.startswith(part + ".")
    }


def test_the_code_the_logged_model_carries_imports_only_itself():
    """A module of it importing another of the package (even inside a function) would fail
    where textclf is not installed."""
    carried = carried_modules()
    assert {"inference", "config", "models", "models.fused", "tokenize"} <= carried
    outside = {n: project_imports(n) - carried for n in carried | {"mlflow_model"}}
    assert {n: found for n, found in outside.items() if found} == {}


def test_the_carried_code_imports_neither_hydra_omegaconf_nor_mlflow_on_import():
    """Its environment has none but MLflow, which only the model file itself imports
    (config.py imports OmegaConf inside the functions that read Hydra's config)."""
    found = {}
    for name in carried_modules():
        top = [n for n in MODULES[name].body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
        found[name] = {i for i in names if i.split(".")[0] in ("hydra", "omegaconf", "mlflow")}
    assert {n: i for n, i in found.items() if i} == {}
    assert config.MISSING == omegaconf.MISSING  # the same marker, without importing it


def leaves(node: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out |= leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


OPTIONS = [
    (group, path) for group in GROUP_SCHEMA for path in sorted((CONF_DIR / group).glob("*.yaml"))
]


@pytest.mark.parametrize("group,path", OPTIONS, ids=[f"{g}/{p.stem}" for g, p in OPTIONS])
def test_an_option_file_sets_only_what_differs_from_the_schema_defaults(group, path):
    """Defaults live in config.py alone: an option file that repeats one would drift from it."""
    schema = {
        f.name: f
        for f in dataclasses.fields(GROUP_SCHEMA[group] or REGISTRIES[group][path.stem].config)
    }
    values = leaves(OmegaConf.to_container(OmegaConf.load(path)) or {})
    if group in REGISTRIES:  # starts from the option's own schema, registered under its name
        assert values.pop("defaults", None) == [f"{path.stem}_schema", "_self_"], path.name
    if group == "data":  # the source an option file chooses is its own name
        assert data.REGISTRY[path.stem].config.source == path.stem, path.name
    for key, value in values.items():
        assert key in schema, f"{path.name}: {key} is not a {group} setting"
        field = schema[key]
        default = (
            field.default_factory()
            if field.default_factory is not dataclasses.MISSING
            else field.default
        )
        assert value != default, (
            f"{path.name}: {group}.{key}: {value!r} repeats the default in "
            "config.py; delete it from the YAML"
        )
    if group in SELECTOR:
        assert values.get(SELECTOR[group]) == path.stem, (
            f"{path.name} must set {group}.{SELECTOR[group]}: {path.stem}"
        )


def test_every_schema_default_is_a_plain_value_or_missing():
    """No default is computed elsewhere: each is written in config.py next to its check."""
    schemas = [s for s in GROUP_SCHEMA.values() if s] + [
        r.config for registry in REGISTRIES.values() for r in registry.values()
    ]
    for schema in schemas:
        for field in dataclasses.fields(schema):
            value = (
                field.default_factory()
                if field.default_factory is not dataclasses.MISSING
                else field.default
            )
            assert value is not dataclasses.MISSING, f"{schema.__name__}.{field.name}"
