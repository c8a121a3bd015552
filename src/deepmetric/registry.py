"""One registry per kind of component: ``create(name, **kwargs)`` and ``names()`` (timm's style)."""
from __future__ import annotations

import inspect
from typing import Any, Callable


class Registry:
    """Maps short names to constructors for one kind of component (``loss``, ``miner``, ...)."""

    def __init__(self, kind: str, plural: str | None = None):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str):
        """Decorator: ``@REGISTRY.register("triplet")`` on a class or factory function."""
        def wrap(obj):
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj
        return wrap

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(self.names())}")
        return self._items[name]

    def create(self, spec: "str | dict[str, Any]", **kwargs):
        """Build a component from a name, or a mapping ``{"name": ..., **kwargs}`` as configs write it."""
        if isinstance(spec, dict):
            spec = dict(spec)
            if "name" not in spec:
                raise ValueError(f"{self.kind}: a mapping needs a 'name' key, got keys {sorted(spec)}")
            name = spec.pop("name")
            kwargs = {**spec, **kwargs}
        else:
            name = spec
        cls = self.get(name)
        try:
            return cls(**kwargs)
        except ValueError as err:  # e.g. "margin: ...": say whose (a loss and its miner may both have a margin)
            if type(err) is not ValueError:  # subclasses may need other arguments
                raise
            raise ValueError(f"{self.kind} {name!r}: {err}") from err
        except TypeError as err:
            params = inspect.signature(cls).parameters
            unknown = sorted(set(kwargs) - set(params))
            if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                raise TypeError(f"{self.kind} {name!r}: unknown arguments {unknown}; it takes "
                                f"{sorted(k for k, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD)}") from None
            raise TypeError(f"{self.kind} {name!r}: bad arguments {sorted(kwargs)}: {err}") from err

    def __contains__(self, name: str) -> bool:
        return name in self._items
