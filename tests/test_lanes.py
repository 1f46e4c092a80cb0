"""The quick lane's tables (tests/conftest.py) name files and tests that exist, so a rename
cannot silently move a slow test into the quick lane or leave a stale entry behind."""

import pathlib

import conftest

TESTS = pathlib.Path(__file__).resolve().parent


def test_integration_files_exist():
    missing = sorted(f for f in conftest.INTEGRATION_FILES if not (TESTS / f).is_file())
    assert not missing, missing


def test_slow_unit_tests_exist_outside_the_integration_files():
    for entry in sorted(conftest.SLOW_UNIT_TESTS):
        file, name = entry.split("::")
        assert file not in conftest.INTEGRATION_FILES, entry
        source = (TESTS / file).read_text()
        assert f"def {name.split('[')[0]}(" in source, entry
