"""The README is the user's first contact: its tables must list what the code really has."""

import dataclasses
import re

from diag.metrics import CATALOG, markdown_table
from diag.settings import ENV_PREFIX, Settings
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_the_metric_table_is_the_catalogs():
    hint = "regenerate: python -c 'import diag.metrics as m; print(m.markdown_table())'"
    assert markdown_table() in README, hint


def test_every_metric_is_documented_with_its_type_and_labels():
    rows = {
        m.group(1): m
        for m in re.finditer(r"^\| `diag_(\w+)` \| (\w+) \| ([\w, '+]*) \|", README, re.M)
    }
    for spec in CATALOG:
        assert spec.name in rows, f"diag_{spec.name} is missing from the README"
        row = rows[spec.name]
        assert row.group(2) == spec.kind
        listed = row.group(3).removesuffix(" + the series' labels").split(",")
        assert tuple(filter(None, (x.strip() for x in listed))) == spec.labels
    assert set(rows) == {spec.name for spec in CATALOG}


def test_every_setting_and_its_variable_is_documented():
    for field in dataclasses.fields(Settings):
        if field.name == "problems":
            continue
        assert f"`{ENV_PREFIX}{field.name.upper()}`" in README, field.name


def test_the_two_setup_commands_are_there():
    assert "make demo" in README and "make test" in README
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
