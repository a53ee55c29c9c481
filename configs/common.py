"""Helpers shared by the config files: ``--config=configs/x.py:variant,key=value`` parsing."""

from __future__ import annotations


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
        kind = type(out[key]) if out[key] is not None else str
        out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return out
