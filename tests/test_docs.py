"""The README keeps up with the code: every setting is documented (and has its attribute)."""

from dataclasses import fields

from collector.platform.config import SETTINGS, Settings

from .conftest import ROOT


def test_every_setting_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [s.env for s in SETTINGS if f"`{s.env}`" not in readme]
    assert not missing, f"settings missing from README.md: {missing}"


def test_readme_starts_with_the_two_commands():
    lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()]
    commands = [line for line in lines[:15] if line.startswith("make ")]
    assert commands[:2] == ["make run", "make test"]


def test_the_settings_class_has_one_attribute_per_declared_setting():
    assert [f.name for f in fields(Settings)] == [s.name for s in SETTINGS]
