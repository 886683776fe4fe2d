"""Explaining a classifier's decision: exact per-token contributions, rendered in the terminal or a plot."""

from .contributions import Explanation, TokenActivations, decompose, explain_text, token_activations
from .render import plot_contributions, render_terminal

__all__ = [
    "Explanation",
    "TokenActivations",
    "decompose",
    "explain_text",
    "plot_contributions",
    "render_terminal",
    "token_activations",
]
