"""What the kit's own errors share: in a notebook they read as their one message, not a traceback."""

from __future__ import annotations


class KitMessage:
    """Mixin for the kit's errors (bad parameters, data, run directories). IPython shows an exception
    that defines ``_render_traceback_`` as the lines it returns, so a notebook cell (and papermill's
    "Exception encountered" report of it) shows ``ParamsError: <the message>`` alone: the message says
    what to change, and the kit's frames would only hide it."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]
