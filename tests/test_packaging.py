"""The install files agree with each other: pyproject, constraints.txt, environment.yml, Makefile, .ci/run."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name.lower()] = req
    return pins


def _all_requirements() -> list[Requirement]:
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def test_every_dependency_has_a_lower_bound_and_a_tested_pin_inside_it():
    pins = _constraints()
    for req in _all_requirements():
        assert any(s.operator in (">=", "==", "~=") for s in req.specifier), f"{req} needs a lower bound"
        name = req.name.lower()
        assert name in pins, f"{name} is not pinned in constraints.txt (the versions we test)"
        pinned = [s for s in pins[name].specifier if s.operator == "=="]
        if pinned and "*" not in pinned[0].version:
            assert Version(pinned[0].version) in req.specifier, f"constraints pin {pins[name]} violates {req}"


def test_environment_yml_installs_the_project_with_the_same_pins():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    required = _pyproject()["project"]["requires-python"]
    assert Version(python.split("=")[1]) in Requirement(f"x{required}").specifier
    assert f"torch{_constraints()['torch'].specifier}" in pip  # the CPU build, pinned before the project
    assert "-c constraints.txt" in pip
    extras = re.search(r"-e \.\[(.+)\]", " ".join(pip)).group(1).split(",")
    assert set(extras) == set(_pyproject()["project"]["optional-dependencies"])


def test_makefile_pins_cpu_torch_and_ci_runs_make_test():
    makefile = (REPO / "Makefile").read_text()
    torch_pin = str(_constraints()["torch"].specifier)
    assert f"pip install -q torch{torch_pin}" in makefile
    assert "-c constraints.txt" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()
    extras = re.search(r"-e '\.\[(.+)\]'", makefile).group(1).split(",")
    assert set(extras) == set(_pyproject()["project"]["optional-dependencies"])


def test_readme_config_block_and_files_match_the_code():
    """Docs that drift from code: the README's YAML block must validate, and the files it names exist."""
    from workbench.config import Config

    readme = (REPO / "README.md").read_text()
    block = readme.split("```yaml")[1].split("```")[0]
    cfg = Config.from_dict(yaml.safe_load(re.sub(r"#.*", "", block)))
    assert set(cfg.to_dict()) == {"DATA", "MODEL", "LOSS", "TRAIN", "SCHEDULE", "AUG", "TRACKING"}
    for name in set(re.findall(r"(?<![\w/])(?:configs|lab|docs|bench|sweeps)/[\w./-]+\.(?:yaml|ipynb|png|py)", readme)):
        assert (REPO / name).exists(), f"README names {name}, which does not exist"


def test_shipped_streamlit_config_does_not_watch_the_project_folder():
    """Streamlit's polling file watcher kept a core busy with one idle tab (bench_app.py part 3 measures it);
    `make run` and `streamlit run app.py` both read this file, so it must turn the watcher off."""
    server = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["server"]
    assert server["fileWatcherType"] == "none" and server["runOnSave"] is False
    assert server["address"] == "127.0.0.1"
    assert "--server.fileWatcherType" not in (REPO / "Makefile").read_text()  # the config file is the one home


def test_animal_mnist_is_installed_without_dependencies_at_the_pinned_version():
    """The animal-mnist wheel declares tensorflow: every install road must say --no-deps, and take its
    version from constraints.txt (one home), which must be the version installed here."""
    from importlib.metadata import version

    install = "pip install -q --no-deps -c constraints.txt animal-mnist"
    assert install in (REPO / "Makefile").read_text()
    assert install.replace(" -q", "") in (REPO / "environment.yml").read_text()
    pin = _constraints()["animal-mnist"]
    assert version("animal-mnist") in pin.specifier, f"installed animal-mnist {version('animal-mnist')} is not {pin}"
