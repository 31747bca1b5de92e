"""The installed distribution: one library (``omnirad``) and one namespace for the apps
(``omnirad_fl``), never generic top-level names such as ``client`` or ``server``.

The repository keeps its folders (client/, server/, strategies/, simulations/); setuptools
installs them as ``omnirad_fl.client`` and so on. Code imports them only by that name: importing
``server.app`` from the repository root would load a second copy of every module it touches.
"""

import ast
import tomllib
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
FOLDERS = {"client": "omnirad_fl.client", "server": "omnirad_fl.server", "strategies": "omnirad_fl.strategies",
           "simulations": "omnirad_fl.simulations"}


def pyproject() -> dict:
    return tomllib.loads((PROJECT / "pyproject.toml").read_text())


def test_every_package_folder_is_installed_under_its_namespaced_name():
    setuptools = pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"] == {name: folder for folder, name in FOLDERS.items()}
    found = set()
    for init in PROJECT.glob("*/**/__init__.py"):
        folder = init.parent.relative_to(PROJECT)
        top, *rest = folder.parts
        if top in FOLDERS or top == "omnirad":
            found.add(".".join([FOLDERS.get(top, top), *rest]))
    assert found == set(setuptools["packages"])
    assert {name.split(".")[0] for name in setuptools["packages"]} == {"omnirad", "omnirad_fl"}


def test_the_apps_and_commands_are_referenced_by_namespaced_paths():
    project = pyproject()
    components = project["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "omnirad_fl.server.app:app", "clientapp": "omnirad_fl.client.app:app"}
    assert all(target.startswith("omnirad_fl.") for target in project["project"]["scripts"].values())


def test_no_module_imports_a_folder_by_its_generic_name():
    generic = []
    for path in PROJECT.rglob("*.py"):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            generic += [f"{path.relative_to(PROJECT)}: {n}" for n in names if n.split(".")[0] in FOLDERS]
    assert not generic
