"""Package list with one mapping (the rest of the metadata is in pyproject.toml).

The repository keeps the folder `experiments/` at the top level, but it is installed under the import
name `moelora_experiments` (setuptools `package_dir`): a top-level package called `experiments` would
shadow the `experiments/` folder of any repository the toolkit is installed into.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["moelora_core*", "proofs_numeric*"]),
        "moelora_experiments",
        *(f"moelora_experiments.{p}" for p in find_packages(where="experiments")),
    ],
    package_dir={"moelora_experiments": "experiments"},
)
