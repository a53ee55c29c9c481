"""Attention-sink analysis on arrays (NumPy in, NumPy out). Plots live in ``plots``."""

from lcache.analysis.massive import MassiveActivations, massive_activations
from lcache.analysis.sinks import (
    SinkPosition,
    SinkTokenId,
    SinkTokens,
    first_token_share,
    first_token_sink_rate,
    sink_map,
    sink_rate,
    sink_scores,
    top_sink_tokens,
)
from lcache.analysis.value_drain import ValueDrain, value_drain

__all__ = [
    "MassiveActivations",
    "SinkPosition",
    "SinkTokenId",
    "SinkTokens",
    "ValueDrain",
    "first_token_share",
    "first_token_sink_rate",
    "massive_activations",
    "sink_map",
    "sink_rate",
    "sink_scores",
    "top_sink_tokens",
    "value_drain",
]
