"""Name -> class registry for token mixers. Unknown names fail loudly with the list of known ones."""

from __future__ import annotations

import inspect

from torch import nn

from ..errors import MixerArgumentError, WavedistillError

MIXERS: dict[str, type[nn.Module]] = {}


class UnknownMixerError(WavedistillError, KeyError):
    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return self.args[0]


def register_mixer(name: str):
    """Class decorator: ``@register_mixer("fnet")`` adds the class to :data:`MIXERS` and sets ``cls.name``."""
    if name != name.lower() or not name.isidentifier():
        raise ValueError(f"mixer names are lowercase identifiers, got {name!r}")

    def wrap(cls):
        if name in MIXERS:
            raise ValueError(f"mixer {name!r} is already registered by {MIXERS[name].__qualname__}")
        cls.name = name
        MIXERS[name] = cls
        return cls

    return wrap


def list_mixers() -> list[str]:
    return sorted(MIXERS)


def get_mixer_class(name: str) -> type[nn.Module]:
    if name not in MIXERS:
        raise UnknownMixerError(f"unknown mixer {name!r}; known mixers: {', '.join(list_mixers())}")
    return MIXERS[name]


def mixer_kwargs(name: str) -> list[str]:
    """Keyword arguments the mixer's constructor accepts (besides ``d_model``); a constructor that hands
    ``**geometry`` on to its base class accepts the base's keyword arguments too."""
    accepted: list[str] = []
    for cls in get_mixer_class(name).__mro__:
        if "__init__" not in cls.__dict__:
            continue
        params = inspect.signature(cls.__dict__["__init__"]).parameters.values()
        accepted += [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                     and p.name not in ("self", "d_model", *accepted)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return accepted
    return accepted


def build_mixer(name: str, d_model: int, **kwargs) -> nn.Module:
    """Build a registered mixer mapping ``(B, T, d_model)`` to ``(B, T, d_model)``.

    Unknown keyword arguments raise a ``MixerArgumentError`` (a ``TypeError``) naming the accepted ones.
    """
    cls = get_mixer_class(name)
    accepted = mixer_kwargs(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise MixerArgumentError(f"mixer {name!r} got unknown arguments {unknown}; it accepts {accepted}")
    return cls(d_model, **kwargs)
