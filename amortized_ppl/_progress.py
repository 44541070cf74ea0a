"""Whether to show a progress bar when the caller leaves it to us (``progress=None``).

Long host-side work (SBC, NUTS references, the trust ladder) shows a bar where someone is
watching, a terminal or a notebook, and stays silent in logs, pipes and test runs, where a bar
is only noise. Training loops keep ``progress=True`` by default as before (tqdm writes a line
per update there).
"""

from __future__ import annotations

import sys

__all__ = ["resolve_progress"]


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ipython = shell.get_ipython()
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


def resolve_progress(progress: bool | None) -> bool:
    """``progress`` if given, else whether standard error is a terminal or this is a notebook."""
    if progress is not None:
        return bool(progress)
    stream = sys.stderr
    try:
        is_terminal = stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        is_terminal = False
    return is_terminal or _in_notebook()
