"""Minimal setuptools shim: package metadata comes from settings.ini (nbdev 2 convention)."""
import shutil
from configparser import ConfigParser
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
cfg = ConfigParser(delimiters=["="])
cfg.read(HERE / "settings.ini", encoding="utf-8")
c = cfg["DEFAULT"]


class BuildWithNotebooks(build_py):
    """Also ship the matrix's papermill notebooks (nbs/papermill) as package data: a regular install runs the matrix too."""

    def run(self):
        super().run()
        dest = Path(self.build_lib) / c["lib_name"] / "bundled" / "papermill"
        dest.mkdir(parents=True, exist_ok=True)
        for nb in sorted((HERE / "nbs" / "papermill").glob("*.ipynb")):
            shutil.copy2(nb, dest / nb.name)


setup(
    name=c["lib_name"],
    version=c["version"],
    description=c["description"],
    author=c["author"],
    license=c["license"],
    python_requires=">=" + c["min_python"],
    packages=find_packages(include=[c["lib_name"], c["lib_name"] + ".*"]),
    include_package_data=True,
    package_data={c["lib_name"]: ["bundled/*"]},
    install_requires=c["requirements"].split(),
    extras_require={"dask": c["dask_requirements"].split(), "dev": c["dev_requirements"].split()},
    entry_points={"console_scripts": c["console_scripts"].split()},
    cmdclass={"build_py": BuildWithNotebooks},
    zip_safe=False,
)
