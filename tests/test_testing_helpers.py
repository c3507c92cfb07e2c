"""The helpers vineyard.testing offers to adapters and third parties."""

from __future__ import annotations

import itertools

import pytest

from vineyard.testing import wait_until


def test_wait_until_returns_the_first_true_value():
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 3 and "done", timeout=5) == "done"


def test_wait_until_fails_naming_what_it_waited_for():
    with pytest.raises(AssertionError, match=r"timed out after 0\.05 s waiting for the moon"):
        wait_until(lambda: False, timeout=0.05, what="the moon")
