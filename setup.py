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

setup(packages=packages, package_dir=package_dir)
