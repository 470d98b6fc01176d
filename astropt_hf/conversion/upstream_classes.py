"""Plain-data stand-ins for the configuration classes that upstream astroPT pickles into `ckpt.pt`.

Since v2, upstream checkpoints carry a pickled `astropt.model.ModalityRegistry` (holding
`ModalityConfig` dataclasses) and list `ModalityConfig`s inside `model_args["modalities"]`. The safe
loader rebuilds those objects as the classes below instead of importing upstream code: they only store
plain values (str, int, float, bool, None and containers of those) and have no behaviour.
"""

from __future__ import annotations

from typing import Any

_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _check_plain(owner: str, field: str, value: Any) -> None:
    """Refuse anything but plain data, so a stand-in can never carry a callable or an arbitrary object."""
    if isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(owner, field, item)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(owner, field, key)
            _check_plain(owner, field, item)
        return
    if isinstance(value, UpstreamRecord):
        return
    raise TypeError(f"{owner}.{field} holds a {type(value).__name__}; expected plain data")


class UpstreamRecord:
    """Base of the stand-ins: an attribute bag filled from the pickled `__dict__` (pickle's BUILD step)."""

    upstream_name = "?"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state) from some protocols
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise TypeError(f"{self.upstream_name} state is a {type(state).__name__}; expected a dict")
        for field, value in state.items():
            if not isinstance(field, str):
                raise TypeError(f"{self.upstream_name} has a non-string attribute name {field!r}")
            _check_plain(self.upstream_name, field, value)
            self.__dict__[field] = value

    def as_dict(self) -> dict[str, Any]:
        """The stored attributes, with nested records turned into dicts too."""
        return {k: (v.as_dict() if isinstance(v, UpstreamRecord) else v) for k, v in self.__dict__.items()}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({fields})"


class UpstreamModalityConfig(UpstreamRecord):
    """Stand-in for `astropt.model.ModalityConfig` (name, input_size, pos_input_size, patch_size, embed_pos,
    loss_weight)."""

    upstream_name = "astropt.model.ModalityConfig"


class UpstreamModalityRegistry(UpstreamRecord):
    """Stand-in for `astropt.model.ModalityRegistry`: `modalities` maps a name to its modality config."""

    upstream_name = "astropt.model.ModalityRegistry"

    def names(self) -> list[str]:
        """Modality names, sorted as upstream orders them in a sequence."""
        return sorted(getattr(self, "modalities", {}) or {})


class UpstreamGPTConfig(UpstreamRecord):
    """Stand-in for `astropt.model.GPTConfig`, in case a checkpoint pickled the config object itself."""

    upstream_name = "astropt.model.GPTConfig"


# Fully qualified upstream names (as written in the pickle) -> the stand-in rebuilt in their place.
UPSTREAM_CLASS_STAND_INS: dict[tuple[str, str], type[UpstreamRecord]] = {
    ("astropt.model", "ModalityConfig"): UpstreamModalityConfig,
    ("astropt.model", "ModalityRegistry"): UpstreamModalityRegistry,
    ("astropt.model", "GPTConfig"): UpstreamGPTConfig,
    # pre-package layouts ran `from model import ...` inside the upstream repository
    ("model", "ModalityConfig"): UpstreamModalityConfig,
    ("model", "ModalityRegistry"): UpstreamModalityRegistry,
    ("model", "GPTConfig"): UpstreamGPTConfig,
}
