"""Validation at the boundary, shared by every config dataclass and every policy method.

Three kinds of checks, all before any work starts:

* **fields** (``check_fields``), at construction: type, range and finiteness of each
  hyper-parameter of a frozen dataclass (policies, ``Budget``, ``Sampling``, ``ModelConfig``).
  ``TypeError`` for a wrong type, ``ValueError`` for a bad value, both naming ``Class.field``.
* **shapes** (``check_chunk``, ``check_token``, ``check_slot_probs``), when a policy method is
  called or traced: rank, batch, heads, head dims and dtype of each array against the cache
  state, naming the argument, the expected and the given shape. Shapes are static, so these are
  Python checks during tracing: free at run time.
* **values** (``check_positions``): only where the positions are concrete (an eager call).
  Inside ``jit`` a value cannot raise; the host-side entry points (``generate``) check first.

Positions are int32 and a stream may use ``0 .. MAX_POSITION`` (``seen = pos + 1`` must fit).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

MAX_POSITION = 2**31 - 2  # int32 positions; the stream length ``pos + 1`` must fit too

Check = Callable[[str, object], None]


# -- fields --------------------------------------------------------------------------------------
def _bounds(where: str, value, lo, hi, lo_open: bool = False) -> None:
    low_ok = lo is None or (value > lo if lo_open else value >= lo)
    if low_ok and (hi is None or value <= hi):
        return
    if hi is None:
        raise ValueError(f"{where} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if lo is None:
        raise ValueError(f"{where} must be <= {hi}, got {value!r}")
    raise ValueError(f"{where} must be in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    """An ``int`` (numpy integers too, never ``bool``) in ``[lo, hi]``."""
    def check(where, value):
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{where} must be an int, got {type(value).__name__} {value!r}")
        _bounds(where, value, lo, hi)
    return check


def real(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Check:
    """A finite number (int or float, never ``bool``) in ``[lo, hi]`` (``(lo, hi]`` if
    ``lo_open``)."""
    def check(where, value):
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            raise TypeError(f"{where} must be a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite, got {value!r}")
        _bounds(where, value, lo, hi, lo_open)
    return check


def boolean() -> Check:
    def check(where, value):
        if not isinstance(value, bool | np.bool_):
            raise TypeError(f"{where} must be a bool, got {type(value).__name__} {value!r}")
    return check


def one_of(choices: Sequence) -> Check:
    def check(where, value):
        if not any(value is None if c is None else isinstance(value, type(c)) and value == c
                   for c in choices):
            raise ValueError(f"{where} must be one of {tuple(choices)}, got {value!r}")
    return check


def optional(inner: Check) -> Check:
    """``None`` or what ``inner`` accepts."""
    def check(where, value):
        if value is not None:
            inner(where, value)
    return check


def check_fields(obj, **checks: Check) -> None:
    """Run ``checks`` on the attributes of ``obj`` named by the keywords (``Class.field``)."""
    owner = type(obj).__name__
    for name, check in checks.items():
        check(f"{owner}.{name}", getattr(obj, name))


def check_args(owner: str, **args: tuple[object, Check]) -> None:
    """``check_args("KVState.init", batch=(batch, integer(1)))``: function arguments."""
    for name, (value, check) in args.items():
        check(f"{owner}: {name}", value)


# -- shapes --------------------------------------------------------------------------------------
_KINDS = {"float": jnp.floating, "int": jnp.integer}


def _dims(labels: str, sizes: Sequence[int | None]) -> str:
    return "[" + ", ".join(lab if n is None else f"{lab}={n}" for lab, n in
                           zip(labels.split(), sizes, strict=True)) + "]"


def check_array(where: str, name: str, x, labels: str, sizes: Sequence[int | None],
                kind: str) -> tuple[int, ...]:
    """Raise unless ``x`` is an array of ``kind`` ('float' or 'int') with one axis per label in
    ``labels`` (``"B H T Dk"``) whose sizes match ``sizes`` (``None``: any). -> its shape."""
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    expected = _dims(labels, sizes)
    if shape is None or dtype is None:
        raise TypeError(f"{where}: {name} must be an array {expected}, got "
                        f"{type(x).__name__}")
    shape = tuple(shape)
    if len(shape) != len(sizes) or any(n is not None and n != s for n, s in
                                       zip(sizes, shape, strict=False)):
        raise ValueError(f"{where}: {name} must be {expected}, got shape {shape}")
    if not jnp.issubdtype(dtype, _KINDS[kind]):
        raise TypeError(f"{where}: {name} must be {'an' if kind == 'int' else 'a'} {kind} "
                        f"array, got {jnp.dtype(dtype).name}")
    return shape


def check_state(where: str, state, kind: type) -> None:
    """Raise unless ``state`` is a ``kind`` (the state type the policy's ``init`` returns)."""
    if not isinstance(state, kind):
        raise TypeError(f"{where}: state must be the {kind.__name__} the policy's init() "
                        f"returns, got {type(state).__name__}")


def state_dims(where: str, state) -> tuple[int, int, int, int | None, int | None]:
    """``(B, H, C, Dk, Dv)`` of a cache state (``Dk``/``Dv`` None when it does not say)."""
    if callable(getattr(state, "dims", None)):  # a composite state (head groups) says
        return state.dims()
    pos = getattr(state, "pos", None)
    if pos is None or getattr(state, "seen", None) is None or len(getattr(pos, "shape", ())) != 3:
        raise TypeError(f"{where}: state must be a cache state from the policy's init(), got "
                        f"{type(state).__name__}")
    b, h, c = pos.shape
    return b, h, c, getattr(state, "key_dim", None), getattr(state, "value_dim", None)


def _check_entries(where: str, name: str, x, b: int, h: int, sizes: Sequence[int]) -> None:
    """``x [B, H, F]`` float with ``F`` one of ``sizes`` (a view's flat frame, or slots)."""
    if len(sizes) == 1:
        check_array(where, name, x, "B H C", (b, h, sizes[0]), "float")
        return
    f = check_array(where, name, x, "B H F", (b, h, None), "float")[2]
    if f not in sizes:
        raise ValueError(f"{where}: {name} must be [B={b}, H={h}, F] with F in {list(sizes)} "
                         f"(the cache's slots or its view's entries), got shape {tuple(x.shape)}")


def check_chunk(where: str, state, keys, values, pos, queries=None, mass=None,
                sizes: Sequence[int] | None = None) -> None:
    """``prefill``: ``keys [B, H, T, Dk]``, ``values [B, H, T, Dv]``, ``pos [B, T]`` int,
    ``queries [B, Hq, T, Dk]`` (``Hq`` a multiple of ``H``), ``mass.cache [B, H, F]`` and
    ``mass.chunk [B, H, T]`` float, against the state's ``B, H, C, Dk, Dv``; ``F`` one of
    ``sizes`` (default ``(C,)``)."""
    b, h, c, dk, dv = state_dims(where, state)
    t = check_array(where, "pos", pos, "B T", (b, None), "int")[1]
    check_array(where, "keys", keys, "B H T Dk", (b, h, t, dk), "float")
    check_array(where, "values", values, "B H T Dv", (b, h, t, dv), "float")
    if queries is not None:
        hq = check_array(where, "queries", queries, "B Hq T Dk", (b, None, t, keys.shape[-1]),
                         "float")[1]
        if hq % h:
            raise ValueError(f"{where}: queries have {hq} heads, not a multiple of the cache's "
                             f"{h} heads")
    if mass is not None:
        _check_entries(where, "mass.cache", mass.cache, b, h, sizes or (c,))
        check_array(where, "mass.chunk", mass.chunk, "B H T", (b, h, t), "float")


def check_token(where: str, state, key, value, pos) -> None:
    """``append``: ``key [B, H, Dk]``, ``value [B, H, Dv]``, ``pos [B]`` int."""
    b, h, _, dk, dv = state_dims(where, state)
    check_array(where, "pos", pos, "B", (b,), "int")
    check_array(where, "key", key, "B H Dk", (b, h, dk), "float")
    check_array(where, "value", value, "B H Dv", (b, h, dv), "float")


def check_slot_probs(where: str, state, slot_probs, sizes: Sequence[int] | None = None) -> None:
    """``observe``: ``slot_probs [B, H, F]`` float, ``F`` one of ``sizes`` (default ``(C,)``)."""
    b, h, c, _, _ = state_dims(where, state)
    _check_entries(where, "slot_probs", slot_probs, b, h, sizes or (c,))


# -- values --------------------------------------------------------------------------------------
def concrete(x) -> np.ndarray | None:
    """``x`` as a host array when its value is known (not a tracer), else None."""
    if x is None or isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def check_positions(where: str, pos) -> None:
    """Concrete positions must be ``-1`` (padding) or in ``[0, MAX_POSITION]``."""
    p = concrete(pos)
    if p is None or p.size == 0:
        return
    bad = (p < -1) | (p > MAX_POSITION)
    if bad.any():
        raise ValueError(f"{where}: position {int(p[bad].flat[0])} is outside [-1, "
                         f"{MAX_POSITION}] (int32 positions: -1 is padding; a stream may use "
                         f"0 .. MAX_POSITION = 2**31 - 2, so that pos + 1 fits)")
