"""The one command-line parser of every script: `transformers.HfArgumentParser` over dataclasses.

`ArgumentParser` adds three things to `HfArgumentParser`:

* no prefix matching (`allow_abbrev=False`): `--head pdf` is refused instead of read as `--head_init pdf`;
* values that read the same on the command line as in a YAML preset: `null` (or `none` where the key is
  not a string) for optional keys, `1e3` for an integer, `true`/`false`/`yes`/`no` for booleans, and for
  keys such as `int | str` an integer when the text is one (`--layer 3`, `--layer last`);
* `parse(argv)`, which fills the dataclasses and refuses anything left over (`parse_known(argv)` hands
  the rest back), and `values_from(mapping)`, which converts a preset's values the same way so they can
  become parser defaults.

Dataclass fields are declared with `option(default, help, minimum=...)`; a field with
`metadata={"flag": False}` is not a command-line option (it keeps its default when parsed).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from transformers import HfArgumentParser

__all__ = ["ArgumentParser", "NOT_A_FLAG", "is_literal", "option", "run_pretraining_driver", "value_converter"]

# Metadata that marks a dataclass field as set by code, never from the command line.
NOT_A_FLAG = {"flag": False}
# Metadata keys argparse understands; anything else (`minimum`, `flag`) is ours.
_ARGPARSE_METADATA = ("help", "aliases", "metavar")

_NULL_WORDS = ("null", "none", "~")
_TRUE_WORDS = ("true", "yes", "1", "on")
_FALSE_WORDS = ("false", "no", "0", "off")


def option(default: Any = dataclasses.MISSING, help: str | None = None, *, minimum: float | None = None,
           **metadata) -> Any:
    """A dataclass field with a help text (and a lower bound that the owner's validation checks)."""
    metadata = dict(metadata, help=help, minimum=minimum)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def is_literal(annotation) -> bool:
    return typing.get_origin(annotation) is Literal


def _union_members(annotation) -> tuple:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _to_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE_WORDS + _FALSE_WORDS:
        return value.lower() in _TRUE_WORDS
    raise ValueError("true or false")


def _to_int(value) -> int:
    if isinstance(value, bool):
        raise ValueError("an integer")
    if isinstance(value, int):
        return value
    try:
        number = float(value)  # "1e4" and 2000.0 are integers too
    except (TypeError, ValueError):
        raise ValueError("an integer") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError("an integer")
    return int(number)


def _to_float(value) -> float:
    if isinstance(value, bool):
        raise ValueError("a number")
    try:
        number = float(value)  # YAML reads 3e-4 (no dot) as a string
    except (TypeError, ValueError):
        raise ValueError("a number") from None
    if not math.isfinite(number):
        raise ValueError("a finite number")
    return number


def _to_str(value) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError("a string")


_CONVERTERS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def value_converter(annotation) -> Callable[[Any], Any]:
    """A function that turns a command-line string or a YAML value into `annotation`'s type, raising
    `argparse.ArgumentTypeError` (``got 'ten'; expected an integer``) when it cannot."""
    members = _union_members(annotation)
    # a list is parsed item by item (argparse collects the items): convert each to the list's item type
    members = tuple(
        item for member in members
        for item in ((typing.get_args(member) or (str,)) if typing.get_origin(member) is list else (member,))
    )
    nullable = type(None) in members
    # "none" is a real value of some string keys (stretch: none, report_to: none); "null" always means null
    null_words = ("null", "~") if str in members else _NULL_WORDS
    # int before str, so that `embedding_layer: 3` stays a block index and "3" on the command line too
    kinds = sorted((k for k in members if k is not type(None)), key=lambda kind: kind is str)
    expected = " or ".join(getattr(kind, "__name__", str(kind)) for kind in kinds)

    def convert(value):
        if value is None or (nullable and isinstance(value, str) and value.lower() in null_words):
            if nullable:
                return None
            raise argparse.ArgumentTypeError("may not be null")
        reasons = []
        for kind in kinds:
            try:
                return _CONVERTERS[kind](value) if kind in _CONVERTERS else kind(value)
            except (TypeError, ValueError) as reason:
                reasons.append(str(reason))
        raise argparse.ArgumentTypeError(f"got {value!r}; expected {' or '.join(reasons) or expected}")

    convert.__name__ = expected or "value"
    return convert


class ArgumentParser(HfArgumentParser):
    """`HfArgumentParser` without prefix matching, with YAML-like values (see the module docstring)."""

    def __init__(self, dataclass_types, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs["allow_abbrev"] = False
        super().__init__(dataclass_types, **kwargs)

    @staticmethod
    def _parse_dataclass_field(parser, field: dataclasses.Field):
        if not field.metadata.get("flag", True):
            return
        declared = field.type
        # HfArgumentParser narrows unions in place and hands all metadata to add_argument: give it a copy
        # that holds only what argparse understands.
        plain = copy.copy(field)
        plain.metadata = types.MappingProxyType(
            {key: value for key, value in field.metadata.items() if key in _ARGPARSE_METADATA}
        )
        HfArgumentParser._parse_dataclass_field(parser, plain)
        if not is_literal(declared) and not is_literal(_union_members(declared)[0]):
            action = next(a for a in parser._actions if f"--{field.name}" in a.option_strings)
            action.type = value_converter(declared)

    def option_actions(self) -> dict[str, argparse.Action]:
        """Every dataclass option by its key (the field name)."""
        names = {f.name for dtype in self.dataclass_types for f in dataclasses.fields(dtype)}
        return {a.dest: a for a in self._actions if a.dest in names and f"--{a.dest}" in a.option_strings}

    def values_from(self, mapping: Mapping[str, Any], source: str) -> dict[str, Any]:
        """`mapping` (e.g. a YAML preset) converted as the command line would convert it, choices checked;
        unknown keys and bad values call `self.preset_error` naming `source`, the key and the value."""
        actions = self.option_actions()
        unknown = sorted(key for key in mapping if key not in actions)
        if unknown:
            self.preset_error(f"{source}: unknown config key(s) {unknown}. Known keys: {', '.join(sorted(actions))}")
        values = {}
        for key, raw in mapping.items():
            if isinstance(raw, dict):
                self.preset_error(f"{source}: config key {key!r} holds a mapping; keys are flat (e.g. hidden_size: 64)")
            try:
                values[key] = _convert_action_value(actions[key], raw)
            except (argparse.ArgumentTypeError, ValueError) as reason:
                self.preset_error(f"{source}: config key {key!r}: {reason}")
        return values

    def preset_error(self, message: str):
        """A bad preset value (default: argparse's usage error and exit 2, as for the command line)."""
        self.error(message)

    def parse(self, argv: Sequence[str] | None = None) -> tuple:
        """One instance of each dataclass from `argv` (default: sys.argv[1:]); leftovers are an error.

        Fields that are not flags keep their defaults. Extra arguments added with `add_argument` come
        back as a last `argparse.Namespace`."""
        return self._fill(self.parse_args(argv))

    def parse_known(self, argv: Sequence[str] | None = None) -> tuple:
        """As `parse`, with the arguments this parser does not know returned last (a list of strings),
        for a driver that hands them on to another parser."""
        namespace, remaining = self.parse_known_args(argv)
        return (*self._fill(namespace), remaining)

    def _fill(self, namespace: argparse.Namespace) -> tuple:
        outputs = []
        for dtype in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            outputs.append(dtype(**{k: v for k, v in vars(namespace).items() if k in names}))
            for name in names & set(vars(namespace)):
                delattr(namespace, name)
        if vars(namespace):
            outputs.append(namespace)
        return tuple(outputs)


def _convert_action_value(action: argparse.Action, raw):
    convert = action.type or (lambda value: value)
    if action.nargs == "+":
        items = raw.replace(",", " ").split() if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"got {raw!r}; expected a list")
        return [convert(item) for item in items]
    value = convert(raw)
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"got {raw!r}; expected one of {list(action.choices)}")
    return value


def run_pretraining_driver(parser: ArgumentParser, argv: Sequence[str] | None, make_options: Callable,
                           check: Callable, run: Callable) -> int:
    """The `main` of a script that trains several pretraining runs (the scaling sweep, the normalisation study).

    Its own flags come from `parser`; every other flag is a pretraining setting shared by all runs.
    `make_options(own, pretrain_argv)` builds the driver's options and `check(options)` checks every run's
    settings, so that a bad one is an error exit (2) naming it before `run(options)` trains anything.
    """
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    own, pretrain_argv = parser.parse_known(argv)
    from astropt_hf.training import ConfigError

    try:
        options = make_options(own, pretrain_argv)
        check(options)
    except (ConfigError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    from astropt_hf.training.collectives import leave_process_group

    try:
        run(options)
    finally:
        leave_process_group()
    return 0
