"""``progress=None``: a bar in terminals and notebooks, none in pipes, logs and test runs."""

import io

import pytest

from amortized_ppl._progress import resolve_progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_an_explicit_choice_wins(monkeypatch):
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert resolve_progress(False) is False
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert resolve_progress(True) is True


@pytest.mark.parametrize("stream,expected", [(_Terminal(), True), (io.StringIO(), False),
                                             (None, False)])
def test_the_default_follows_the_terminal(monkeypatch, stream, expected):
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.delitem(__import__("sys").modules, "IPython", raising=False)
    assert resolve_progress(None) is expected


def test_a_notebook_kernel_counts_as_watched(monkeypatch):
    import sys
    import types

    kernel = types.SimpleNamespace(config={"IPKernelApp": {}})
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: kernel
    monkeypatch.setitem(sys.modules, "IPython", fake)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert resolve_progress(None) is True
    fake.get_ipython = lambda: None  # IPython imported, no kernel running
    assert resolve_progress(None) is False
