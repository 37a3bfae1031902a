"""Attention heatmaps, as in Bahdanau et al. (2015), Figure 3: source words across the top, target words down.

The figure is a `matplotlib.figure.Figure` built without pyplot, so no window backend is ever chosen (it renders
with Agg on a server with no display) and no global figure list grows in a long-running demo.
"""

import numpy as np
from matplotlib.figure import Figure

CELL_INCHES = 0.32  # per word: room for a 9-point label
MARGIN_INCHES = 1.6  # for the longest labels and the colour bar


def plot_attention(source_tokens, target_tokens, weights, title=None):
    """A heatmap of `weights` (target x source, each row a distribution over the source) with its colour bar.

    Args:
        source_tokens (`list[str]`): the column labels (source words or subwords), shown above the columns.
        target_tokens (`list[str]`): the row labels (target words or subwords).
        weights: `len(target_tokens) x len(source_tokens)` values in [0, 1] (a tensor or an array), such as the
            `attention` of the translation pipeline's `return_attention=True`.
        title (`str`, *optional*): a line above the plot.
    Returns:
        `matplotlib.figure.Figure`, sized so that every label is readable; save it with `figure.savefig(path)`.
    """
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape != (len(target_tokens), len(source_tokens)):
        raise ValueError(f"`weights` has shape {weights.shape}, expected (len(target_tokens), len(source_tokens)) "
                         f"= ({len(target_tokens)}, {len(source_tokens)}).")
    width = MARGIN_INCHES + 1.0 + CELL_INCHES * max(len(source_tokens), 4)
    height = MARGIN_INCHES + CELL_INCHES * max(len(target_tokens), 4) + (0.3 if title else 0.0)
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    # A fixed 0..1 scale, so that pictures of different sentences compare; white is no attention.
    image = axes.imshow(weights, cmap="Greys", vmin=0.0, vmax=1.0, aspect="equal", interpolation="nearest")
    axes.set_xticks(range(len(source_tokens)), source_tokens, rotation=60, ha="left", rotation_mode="anchor",
                    fontsize=9)
    axes.set_yticks(range(len(target_tokens)), target_tokens, fontsize=9)
    axes.xaxis.tick_top()
    axes.tick_params(length=0)
    axes.set_xticks(np.arange(len(source_tokens) + 1) - 0.5, minor=True)
    axes.set_yticks(np.arange(len(target_tokens) + 1) - 0.5, minor=True)
    axes.grid(which="minor", color="#e4e4e4", linewidth=0.5)
    axes.tick_params(which="minor", length=0)
    figure.colorbar(image, ax=axes, shrink=min(1.0, 4.0 / max(len(target_tokens), 1) + 0.5), pad=0.02,
                    label="attention weight")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
