"""Build glue ``pyproject.toml`` cannot say: ship the top-level ``layouts/`` as ``hybridxfer.layouts``.

Why a mapping and not a copy: the repository keeps one copy of each layout file, in
``layouts/``, where reviewers find it; the mapping (``package-dir`` in ``pyproject.toml``)
puts it inside the package in a wheel and in an editable install alike. A find directive
cannot name a package that has no directory of its own, hence this list.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["hybridxfer", "hybridxfer.*"], exclude=["*.__pycache__"]),
        "hybridxfer.layouts",
    ],
)
