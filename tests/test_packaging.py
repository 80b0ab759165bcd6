"""pyproject.toml builds without setuptools deprecation warnings (``make demo`` stays quiet)."""

import tomllib
import warnings
from pathlib import Path

from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_license_is_an_spdx_string_without_deprecation_warning() -> None:
    """The TOML-table form of ``project.license`` warns on every ``pip install -e .``."""
    project = tomllib.loads(PYPROJECT.read_text())
    assert project["project"]["license"] == "Apache-2.0"
    # The SPDX string form needs setuptools>=77 in the isolated build environment.
    requires = project["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=") for r in requires), requires
    version = next(r.split(">=")[1] for r in requires if r.startswith("setuptools"))
    assert int(version.split(".")[0]) >= 77, requires
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), PYPROJECT)
    license_warnings = [str(w.message) for w in caught if "license" in str(w.message).lower()]
    assert license_warnings == []
    assert dist.metadata.license_expression == "Apache-2.0"
