"""Package discovery with import-name mapping.

The repository keeps the design card's folder names (``training/``, ``export/``) while the
installed import names are unambiguous (``mose_training``, ``mose_export``): a bare
``training`` or ``export`` package in site-packages would collide with other projects.
Everything else lives in pyproject.toml.
"""

from setuptools import find_packages, setup

FOLDERS = {"mose_lsp": "mose_lsp", "mose_training": "training", "mose_export": "export"}

packages, package_dir = [], {}
for name, folder in FOLDERS.items():
    for found in find_packages(include=[folder, f"{folder}.*"]):
        packages.append(name + found[len(folder):])
    package_dir[name] = folder
# The embedded model's folder holds data only (no __init__.py); listed as a package so that its
# files ship as that package's data (setuptools warns about an importable folder left out).
packages.append("mose_lsp.default_model")

setup(packages=packages, package_dir=package_dir)
