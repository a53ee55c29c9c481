"""KV-cache state and policies. Imports only jax and numpy: usable in any JAX project."""

from lcache.cache import registry
from lcache.cache.adakv import AdaKV, PoolState, SnapVote
from lcache.cache.base import Dense, Policy, PrefillMass, advance_seen, write_slots
from lcache.cache.budgets import (
    Budget,
    cache_bytes,
    dynamic,
    layer_policies,
    per_layer,
    pyramid,
    uniform,
)
from lcache.cache.compaction import CompactState, DecodeCompaction
from lcache.cache.decode_room import reserve_decode_room
from lcache.cache.duo import duo_layers
from lcache.cache.expected import ExpectedAttention, ExpectedScores
from lcache.cache.h2o import H2O, ValueAware
from lcache.cache.head_groups import HeadGroups, HeadGroupState
from lcache.cache.headkv import head_budgets, headkv_layer, headkv_layers
from lcache.cache.kvzip import kvzip_compress, kvzip_keep, kvzip_scores
from lcache.cache.quantized import Quantized, QuantizedKVState, quantized
from lcache.cache.razor import Compensated, CompState, razor_heads, razor_layers
from lcache.cache.recompress import Recompress
from lcache.cache.registry import LayerPolicies
from lcache.cache.scored import ScoredPolicy
from lcache.cache.scorers import TOVA, KeyNorm, Random
from lcache.cache.selection import evict, keep_top, priority, select
from lcache.cache.snapkv import SnapKV
from lcache.cache.state import EMPTY, KVState, empty_state
from lcache.cache.view import CacheView, Segment
from lcache.cache.voting import observer_probs, observers, pool_by_position
from lcache.cache.window import SlidingWindow, StreamingLLM

__all__ = ["AdaKV", "Budget", "CacheView", "CompState", "CompactState", "Compensated",
           "DecodeCompaction", "Dense", "EMPTY", "ExpectedAttention", "ExpectedScores", "H2O",
           "HeadGroupState", "HeadGroups", "KVState", "KeyNorm", "LayerPolicies", "Policy",
           "PoolState", "PrefillMass", "Quantized", "QuantizedKVState", "Random", "Recompress",
           "ScoredPolicy", "Segment", "SlidingWindow", "SnapKV", "SnapVote", "StreamingLLM",
           "TOVA", "ValueAware", "advance_seen", "cache_bytes", "duo_layers", "dynamic",
           "empty_state", "evict", "head_budgets", "headkv_layer", "headkv_layers", "keep_top",
           "kvzip_compress", "kvzip_keep", "kvzip_scores", "layer_policies", "observer_probs",
           "observers", "per_layer", "pool_by_position", "priority", "pyramid", "quantized",
           "razor_heads", "razor_layers", "registry", "reserve_decode_room", "select", "uniform",
           "write_slots"]
