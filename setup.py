"""Minimal setuptools shim: package metadata comes from settings.ini (nbdev 2 convention)."""
from configparser import ConfigParser
from pathlib import Path

from setuptools import find_packages, setup

cfg = ConfigParser(delimiters=["="])
cfg.read(Path(__file__).with_name("settings.ini"), encoding="utf-8")
c = cfg["DEFAULT"]
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
    zip_safe=False,
)
