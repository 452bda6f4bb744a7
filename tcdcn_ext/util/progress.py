"""The one progress facility: a tqdm bar on stderr (tqdm is a dependency), silent when disabled."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["progress_bar"]


def progress_bar(total: int | None, desc: str, enabled: bool = True, unit: str = "it", initial: int = 0,
                 **kwargs: Any):
    """A ``tqdm`` bar on stderr for ``total`` steps (None: a counter), shown only when ``enabled``; redrawn at most
    twice a second. Use ``update(k)`` for ``k`` more steps, ``set_postfix_str`` for a note, ``close()`` at the end
    (or ``with``)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled, file=sys.stderr,
                mininterval=0.5, dynamic_ncols=True, **kwargs)
