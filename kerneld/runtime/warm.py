"""Work the zygote does once so that no kernel pays for it: the first plot (issue 15).

Why: an agent's first plot in a fresh kernel cost ~140 ms, most of it one-time set-up that
does not depend on the plot — the Agg backend's import, the font lookup and the loading of
DejaVu Sans by FreeType, the text layout caches and the PNG writer. Done in the zygote, every
forked worker inherits it (copy-on-write; the pages stay shared until written).

Only what the zygote has preloaded is warmed: without `matplotlib.pyplot` in the preload
nothing is imported here.
"""

from __future__ import annotations

import io
import sys


def warm_plot() -> None:
    """Draw and encode one small figure with text, as a first notebook plot would."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    fig, ax = plt.subplots()
    try:
        ax.plot([0, 1, 2], [0, 1, 4], label="warm")
        ax.set_title("kerneld")
        ax.legend()
        fig.savefig(io.BytesIO(), format="png")
    finally:
        plt.close(fig)
