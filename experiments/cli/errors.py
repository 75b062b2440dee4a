"""User errors as one line: parse errors and data or checkpoint errors reduced to
`error: <option or file>: <what was expected>` (printed by `experiments.train`). The checks that raise
them before anything is created are in `experiments/cli/checks.py`.
"""
from __future__ import annotations

import difflib
import re
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from datamodules.voc import DatasetError
from lightning_modules.run.checkpoints import CheckpointError, DiskFullError
from lightning_modules.run.divergence import DivergenceError
from lightning_modules.run.lock import RunInUseError
from lightning_modules.run.record import RunFileError


class ConfigError(ValueError):
    """An option value the run cannot use: `option` names it, the message says what was expected."""

    def __init__(self, option: str, expected: str) -> None:
        super().__init__(f"{option}: {expected}")


USER_ERRORS = (ConfigError, DatasetError, CheckpointError, DiskFullError, RunFileError, RunInUseError, DivergenceError)


def one_line(error: BaseException) -> str:
    """The user-facing line of an error. A dataset error raised in a DataLoader worker arrives wrapped in
    the worker's traceback: its own message is the last line, after the exception's class name."""
    message = str(error).strip()
    if "Original Traceback" in message:
        message = re.sub(r"^[\w.]+: ", "", message.splitlines()[-1].strip())
    return " ".join(message.split())


def _class_path_message(message: str) -> str | None:
    """The inner error of a bad `--data.X` (the dataset layout is a class_path): jsonargparse reports it as
    the whole `data` value failing a Union; the user needs the key and what that key expected."""
    outer = re.match(r'Parser key "([^"]+)":', message)
    inner = re.search(r"Problem with given class_path '[^']+':\n(.*?)\n\s*- Expected a <class 'NoneType'>", message, re.S)
    if not (outer and inner):
        return None
    body = textwrap.dedent(inner.group(1)).strip()
    unknown = re.search(r"Option '([^']+)' is not accepted", body)
    if unknown:
        given = re.search(r"NestedArg\(key='([^']+)', val='([^']*)'\)", message)
        return f"unrecognized arguments: --{outer.group(1)}.{unknown.group(1)}" + (f"={given.group(2)}" if given else "")
    return _parser_message(re.sub(r'^Parser key "([^"]+)"', lambda m: f'Parser key "{outer.group(1)}.{m.group(1)}"', body))


def _parser_message(message: str) -> str:
    """jsonargparse's multi-line message → `--option: what was expected`."""
    nested = _class_path_message(message)
    if nested:
        return nested
    match = re.match(r'Parser key "([^"]+)":\s*(.*)', message, re.S)
    if not match:
        return message.strip().splitlines()[0]
    key, rest = match.groups()
    lines = [line.strip(" -") for line in rest.splitlines() if line.strip(" -")]
    expected = [re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", line) for line in lines if line.startswith("Expected a")]
    given = next((line for line in lines if line.startswith("Given value:")), "")
    if lines and lines[0].startswith("Does not validate") and expected:
        accepted = _accepted_values(e.removeprefix("Expected a ") for e in expected)
        if accepted:
            return f"--{key}: expected one of {', '.join(accepted)}; {given.lower()}"
        what = " or ".join(e.removeprefix("Expected a ").split(".")[0] for e in expected)
        return f"--{key}: expected {what}; {given.lower()}"
    return f"--{key}: {expected[0] if expected else lines[0] if lines else 'invalid value'}"


def _accepted_values(types: Iterable[str]) -> list[str] | None:
    """The values a union of `typing.Literal[...]` (and None) accepts, as written in a config; None if a
    member is another type (then the type names say more)."""
    values: list[str] = []
    for name in types:
        literal = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", name)
        if name == "NoneType":
            values.append("null")
        elif literal:
            values += [v.strip().strip("'\"") for v in literal.group(1).split(",")]
        else:
            return None
    return list(dict.fromkeys(values))


class UnknownKeyError(ConfigError):
    """A key no option of the subcommand has; `key` is its dotted name (located in a config file later)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__("command line", message)
        self.key, self.message = key, message


class ConfigSyntaxError(ConfigError):
    """A config file that is not YAML (located and explained by `locate_in_config_files`)."""


class OneLineErrorParser(LightningArgumentParser):
    """Parse errors raise ConfigError (printed as one line by `main`) instead of usage + message."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse's internal parsers retry on errors
            super().error(message, ex)
        if message.startswith("Problems parsing config"):
            raise ConfigSyntaxError("config file", message.splitlines()[0])
        reduced = _parser_message(message)
        unknown = re.search(r"does not accept option '([^']+)'", message) or re.match(
            r"unrecognized arguments: --([\w.]+)", reduced)
        if unknown:
            raise UnknownKeyError(unknown.group(1), reduced)
        option, _, expected = reduced.partition(": ")
        raise ConfigError(option, expected) if expected else ConfigError("command line", option)


def config_files(args: Sequence[str]) -> list[Path]:
    """The `--config` files of a command line, in the order they are read."""
    files = []
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            files.append(Path(args[i + 1]))
        elif arg.startswith("--config="):
            files.append(Path(arg.split("=", 1)[1]))
    return files


def dotted_items(tree, prefix: str = "") -> dict[str, object]:
    """{"a.b.c": value} for every key of a parsed YAML tree, nested or written with dots."""
    if not isinstance(tree, dict):
        return {}
    items: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        items[name] = value
        items.update(dotted_items(value, name + "."))
    return items


def locate_in_config_files(error: ConfigError, files: Sequence[Path], valid_keys: Iterable[str]) -> ConfigError:
    """The same error, naming the config file it comes from: for YAML that does not parse, the file, line
    and column; for an unknown key, the file and the closest valid key (`difflib`). Unchanged if no file
    holds it (a command-line mistake gets the closest key too)."""
    if isinstance(error, ConfigSyntaxError):
        for path in files:
            try:
                yaml.safe_load(path.read_text())
            except OSError:
                continue
            except yaml.MarkedYAMLError as e:
                mark = e.problem_mark or e.context_mark
                context = f" ({e.context}, line {e.context_mark.line + 1})" if e.context and e.context_mark else ""
                return ConfigError(str(path), f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: "
                                              f"{e.problem}{context}")
        return error
    if not isinstance(error, UnknownKeyError):
        return error
    if ".init_args." not in error.key:  # written the short way (--data.batch_size): suggest it that way
        valid_keys = {key.replace(".init_args.", ".") for key in valid_keys}
    closest = difflib.get_close_matches(error.key, list(valid_keys), n=1, cutoff=0.6)
    hint = f"; did you mean {closest[0]}?" if closest else ""
    for path in reversed(files):  # the last file that sets it is the one the parser complained about
        try:
            keys = dotted_items(yaml.safe_load(path.read_text()))
        except (OSError, yaml.YAMLError):
            continue
        if error.key in keys:
            return ConfigError(str(path), f"unknown key {error.key}{hint or ' (no option is close to it)'}")
    option, _, expected = error.message.partition(": ")
    return ConfigError(option, f"{expected}{hint.replace('mean ', 'mean --')}") if expected else error
