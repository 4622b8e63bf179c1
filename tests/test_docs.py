"""The run-config reference in docs/ lists every key of the app with its real default."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from fedlab.config import RunConfig

PROJECT_DIR = Path(__file__).resolve().parent.parent
REFERENCE = PROJECT_DIR / "docs" / "run-config.md"
ROW = re.compile(r"^\| `(?P<key>[a-z0-9-]+)` \| `(?P<default>[^`]*)` \| (?P<meaning>.+) \|$")


def documented_defaults(text: str) -> dict[str, str]:
    """Map each key of the reference's tables to the default text written beside it."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            key = match["key"]
            if key in rows:
                raise AssertionError(f"{key} is documented twice")
            rows[key] = match["default"]
    return rows


def app_defaults() -> dict[str, object]:
    with (PROJECT_DIR / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["tool"]["flwr"]["app"]["config"]


def toml_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def test_reference_documents_every_key_once() -> None:
    documented = documented_defaults(REFERENCE.read_text(encoding="utf-8"))
    defaults = app_defaults()
    assert sorted(set(defaults) - set(documented)) == [], "keys missing from docs/run-config.md"
    assert sorted(set(documented) - set(defaults)) == [], "docs/run-config.md names keys the app lacks"


def test_reference_defaults_match_the_app() -> None:
    documented = documented_defaults(REFERENCE.read_text(encoding="utf-8"))
    wrong = {
        key: (documented.get(key), toml_text(value))
        for key, value in app_defaults().items()
        if documented.get(key) != toml_text(value)
    }
    assert wrong == {}, "documented default != pyproject default"


def test_app_defaults_match_the_typed_config() -> None:
    # The reference reads pyproject.toml; RunConfig must agree with it, or the docs mislead.
    config = RunConfig().to_run_config()
    assert {key: config[key] for key in app_defaults()} == app_defaults()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("| `alpha` | `0.1` | skew |", {"alpha": "0.1"}), ("| key | default | meaning |", {})],
)
def test_row_parser(text: str, expected: dict[str, str]) -> None:
    assert documented_defaults(text) == expected
