"""Interface names as Linux takes them (``dev_valid_name``), but a NUL, which it would cut,
and bytes that are not UTF-8, which no result JSON can carry."""

from __future__ import annotations

import pytest

from cni_plugins.spec.names import interface_name_problem


@pytest.mark.parametrize("name", ["eth0", "x" * 15, "br-1.2", "é" * 7])
def test_valid(name: str) -> None:
    assert interface_name_problem(name) == ""


@pytest.mark.parametrize(
    "name,words",
    [
        ("", "empty"),
        ("x" * 16, "too long"),
        ("é" * 8, "too long"),
        (".", ". or .."),
        ("..", ". or .."),
        ("a/b", "/ or :"),
        ("eth0:1", "/ or :"),
        ("eth 0", "whitespace"),
        ("fz\x00br", "NUL"),
        ("\x00", "NUL"),
        ("eth\udcff", "UTF-8"),  # the byte 0xff of an environment variable
        ("eth\ud800", "UTF-8"),
    ],
)
def test_invalid(name: str, words: str) -> None:
    assert words in interface_name_problem(name)
