"""Helpers shared by the config files: ``--config=configs/x.py:variant,key=value`` parsing."""

from __future__ import annotations

_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def check_variant(experiment: str, variant: str, variants) -> None:
    """Raise ValueError unless ``variant`` is one of ``variants`` (a mapping or a set)."""
    if variant not in variants:
        raise ValueError(f"unknown {experiment} variant {variant!r}; expected one of "
                         f"{sorted(variants)}")


def parse_arg(arg: str, **defaults):
    """``"small,wd=0.5,attn=sigmoid"`` -> ``{"variant": "small", "wd": 0.5, "attn": "sigmoid"}``.

    The first bare word is the variant; values are cast to the type of their default.
    """
    out = dict(defaults)
    for i, part in enumerate(p for p in arg.split(",") if p):
        if "=" not in part:
            if i:
                raise ValueError(f"bare word {part!r} must come first in config arg {arg!r}")
            out["variant"] = part
            continue
        key, value = part.split("=", 1)
        if key not in out:
            raise ValueError(f"unknown config arg {key!r} in {arg!r}; known: {sorted(out)}")
        out[key] = _cast(key, value, type(out[key]) if out[key] is not None else str, arg)
    return out


def _cast(key: str, value: str, kind: type, arg: str):
    """``value`` as ``kind`` (the type of ``key``'s default); a ValueError names the argument."""
    if kind is bool:
        if value.lower() not in _TRUE + _FALSE:
            raise ValueError(f"config arg {key}={value!r} in {arg!r} is not a bool; use one of "
                             f"{_TRUE + _FALSE}")
        return value.lower() in _TRUE
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"config arg {key}={value!r} in {arg!r} is not a valid "
                         f"{kind.__name__}") from None
