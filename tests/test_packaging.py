"""The locks `make install` reads (`make lock` writes both): requirements-lock-ray.txt for
installs with the ray extra, requirements-lock.txt for the rest. Each holds what pyproject.toml
asks for; the one without Ray is free of the caps its launcher needs and otherwise pins what
the ray lock pins, so CI (which installs the ray lock) tests the versions other installs get."""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = metadata("textclf")  # pyproject.toml as installed


def make_variables() -> dict[str, str]:
    """The Makefile's `NAME := value` lines, their `$(NAME)` references expanded."""
    found = dict(re.findall(r"^([A-Z_]+) := (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE))
    return {
        name: re.sub(r"\$\((\w+)\)", lambda m: found.get(m.group(1), m.group(0)), value)
        for name, value in found.items()
    }


MAKE = make_variables()
PLAIN, RAY = MAKE["LOCK"], MAKE["LOCK_RAY"]
EXTRAS = {PLAIN: MAKE["LOCK_EXTRAS"].split(","), RAY: MAKE["LOCK_RAY_EXTRAS"].split(",")}
RAY_CAPS = set(MAKE["RAY_CAPS"].split())


def pins(lock: str) -> dict[str, Version]:
    """A lock's `name==version` lines."""
    text = (ROOT / lock).read_text()
    return {
        canonicalize_name(name): Version(version)
        for name, version in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.MULTILINE)
    }


def requirements(extras: list[str], core: bool = True) -> list[Requirement]:
    """pyproject.toml's dependencies (unless not `core`) and those of `extras`."""
    found = [Requirement(line) for line in PROJECT.get_all("Requires-Dist") or []]
    return [
        r
        for r in found
        if (core and r.marker is None)
        or (r.marker is not None and any(r.marker.evaluate({"extra": e}) for e in extras))
    ]


def test_the_locks_cover_every_extra_but_cuda_and_only_one_has_ray():
    assert set(PROJECT.get_all("Provides-Extra") or []) - set(EXTRAS[RAY]) == {"cuda"}
    assert set(EXTRAS[RAY]) - set(EXTRAS[PLAIN]) == {"ray"}


@pytest.mark.parametrize("lock", [PLAIN, RAY])
def test_each_lock_pins_every_requirement_of_its_extras_within_its_range(lock):
    """A lock that `make install` reads has not fallen behind pyproject.toml: each package the
    core and the lock's extras name is in it, at a version their range allows."""
    pinned = pins(lock)
    for requirement in requirements(EXTRAS[lock]):
        version = pinned.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is not in {lock}: run make lock"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock} pins {requirement.name}=={version}, outside {requirement}: run make lock"
        )


def test_installs_without_ray_are_not_held_back_by_its_launchers_caps():
    """The ray extra caps cloudpickle (<3, for hydra-ray-launcher) and joblib (<1.6, which
    needs cloudpickle>=3); requirements-lock.txt holds neither Ray nor those caps."""
    plain = pins(PLAIN)
    assert "ray" not in plain and "hydra-ray-launcher" not in plain
    capped = {
        canonicalize_name(r.name): r
        for r in requirements(["ray"], core=False)
        if canonicalize_name(r.name) in plain
    }
    assert set(capped) == RAY_CAPS == {"cloudpickle", "joblib"}, "RAY_CAPS in the Makefile"
    for name, requirement in capped.items():
        [cap] = [Version(s.version) for s in requirement.specifier if s.operator == "<"]
        assert plain[name] >= cap, f"{PLAIN} pins {name}=={plain[name]}, below the ray cap {cap}"
    assert plain["joblib"] >= Version("1.6") and plain["cloudpickle"] >= Version("3")


def test_the_locks_pin_the_same_versions_but_those_ray_caps_pull_down():
    """CI installs the ray lock: it tests every package an install without Ray gets, at the
    same version, except the capped ones."""
    plain, ray = pins(PLAIN), pins(RAY)
    assert set(plain) <= set(ray), f"only in {PLAIN}: {sorted(set(plain) - set(ray))}"
    differ = {name for name in plain if plain[name] != ray[name]}
    assert differ <= RAY_CAPS, {name: (str(plain[name]), str(ray[name])) for name in differ}
    assert all(ray[name] < plain[name] for name in differ)


@pytest.mark.parametrize(
    "extras, lock",
    [
        ("dev", PLAIN),
        ("dev,postgres,optuna", PLAIN),
        ("dev,ray", RAY),
        (MAKE["LOCK_RAY_EXTRAS"], RAY),
    ],
)
def test_make_install_reads_the_ray_lock_only_with_the_ray_extra(extras, lock):
    shown = subprocess.run(
        ["make", "-n", "install", f"EXTRAS={extras}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"-c {lock} -e '.[{extras}]'" in shown


@pytest.mark.parametrize("target", ["train", "test", "sweep", "predict"])
def test_a_fresh_clone_makes_its_venv_before_a_command_and_not_again(tmp_path, target):
    """The README's set-up is `make train` / `make test`: with no .venv each installs first."""
    (tmp_path / "Makefile").write_text((ROOT / "Makefile").read_text())
    plan = subprocess.run(["make", "-n", target], cwd=tmp_path, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    steps = plan.stdout.splitlines()
    venv = next(i for i, s in enumerate(steps) if s.endswith("-m venv .venv"))
    install = next(
        i for i, s in enumerate(steps) if "pip install --quiet -c requirements-lock" in s
    )
    first_use = next(i for i, s in enumerate(steps) if s.startswith(".venv/bin/") and i > install)
    assert venv < install < first_use
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "textclf").touch()
    (tmp_path / ".venv" / "bin" / "python").touch()
    again = subprocess.run(["make", "-n", target], cwd=tmp_path, capture_output=True, text=True)
    assert "pip install" not in again.stdout and "-m venv" not in again.stdout
