"""KV-cache state and policies. Imports only jax and numpy: usable in any JAX project."""

from lcache.cache.base import Dense, Policy, PrefillMass, advance_seen, write_slots
from lcache.cache.state import EMPTY, CacheView, KVState, empty_state

__all__ = ["EMPTY", "CacheView", "Dense", "KVState", "Policy", "PrefillMass", "advance_seen",
           "empty_state", "write_slots"]
