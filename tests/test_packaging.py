"""pyproject.toml's lower bounds are the versions .ci/minimum-versions.txt pins.

`.ci/run-minimum-versions` runs the suite under those pins; this keeps a bound from
moving in one file and not the other, which would leave the declared minimum untested.
A bound that differs by Python version (an environment marker) is matched with the pin
under the same marker.
"""

import pathlib
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _key(requirement: Requirement) -> tuple[str, str]:
    """(normalised name, environment marker or '') of a requirement."""
    return canonicalize_name(requirement.name), str(requirement.marker or "")


def declared_lower_bounds() -> dict[tuple[str, str], Version]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        lower = [s.version for s in requirement.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{line!r}: every dependency needs exactly one '>=' bound"
        bounds[_key(requirement)] = Version(lower[0])
    return bounds


def pinned_versions() -> dict[tuple[str, str], Version]:
    pins = {}
    for number, raw in enumerate(
        (ROOT / ".ci" / "minimum-versions.txt").read_text().splitlines(), start=1
    ):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"minimum-versions.txt line {number}: expected 'name==version', got {raw!r}"
        )
        pins[_key(requirement)] = Version(specifiers[0].version)
    return pins


def test_every_declared_lower_bound_is_pinned_at_that_version():
    declared, pinned = declared_lower_bounds(), pinned_versions()
    assert declared, "pyproject.toml declares no dependency"
    mismatched = {
        key: (str(bound), str(pinned.get(key))) for key, bound in declared.items() if pinned.get(key) != bound
    }
    assert not mismatched, f"(pyproject bound, pin) differ: {mismatched}"
    assert set(pinned) == set(declared), f"pinned but not declared: {sorted(set(pinned) - set(declared))}"


def test_markers_compare_equal_however_they_are_quoted():
    """pyproject writes markers with single quotes, the pins file with double quotes."""
    assert _key(Requirement("numpy>=2.1; python_version >= '3.13'")) == _key(
        Requirement('numpy==2.1.0; python_version >= "3.13"')
    )
