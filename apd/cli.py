"""What the command-line scripts share: flags parsed up front and every user error reported as one line on
stderr with exit status 1 (`--verbose` shows the traceback instead).

    from apd import cli
    ...
    if __name__ == "__main__":
        cli.run(main)

User errors are ValueError and OSError (FileNotFoundError, NotADirectoryError, ...), raised with their full
message by the library, and TrainingStopped. The config file and its `--config.a.b=value` overrides are checked
when the config flag is defined (`define_config`), so a missing file or a misspelt field (with the closest
names as suggestion) stops the command before any work.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from typing import Callable

from absl import app, flags
from ml_collections import config_flags

flags.DEFINE_bool("verbose", False, "Show the full traceback of an error instead of one line.")
FLAGS = flags.FLAGS


class UserError(Exception):
    """An error in what the user asked for, reported in one line."""


def _verbose(argv: list[str]) -> bool:
    """--verbose on a command line whose flags are not parsed yet."""
    return any(a == "--verbose" or a.lower() in ("--verbose=true", "--verbose=1") for a in argv)


def fail(message: str) -> None:
    """Print `error: message` (one line) to stderr and exit with status 1."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(1)


def _load_config_file(spec: str):
    """get_config(arg) of the file `path[:arg]`; raises UserError when the file is missing or broken."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise UserError(f"config file {path} not found (configs/<task>.py lists the tasks)")
    try:
        module_spec = importlib.util.spec_from_file_location("_apd_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception as err:  # a config file is user code: any error in it is the user's
        raise UserError(f"config file {spec} cannot be loaded: {type(err).__name__}: {err}") from err


def _unknown_field(config, dotted: str) -> str | None:
    """A message for the first part of `dotted` that config lacks (with close names), or None."""
    node, done = config, []
    for part in dotted.split("."):
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            where = ".".join(done) or "the config"
            close = difflib.get_close_matches(part, keys, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join('.'.join(done + [c]) for c in close)}?" if close else ""
            return f"unknown config field {'.'.join(done + [part])} ({where} has no {part!r}){hint}"
        node, done = node[part], done + [part]
    return None


def _config_spec(argv: list[str], default: str) -> str:
    """The --config value of argv (its last one), else the default."""
    spec = default
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("--config="):
            spec = arg[len("--config="):]
        elif arg == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
    return spec


def check_config_args(argv: list[str], default: str) -> None:
    """Load the config file of argv and check that every `--config.a.b=value` names a field of it; raises
    UserError for a missing or broken file or an unknown field (with the closest names)."""
    base = _load_config_file(_config_spec(argv, default))
    for arg in argv[1:]:
        if arg.startswith("--config."):
            problem = _unknown_field(base, arg[len("--config."):].split("=", 1)[0])
            if problem:
                raise UserError(problem)


def define_config(default: str) -> None:
    """DEFINE_config_file('config', default), after checking the config file and overrides of sys.argv (which
    ml_collections reads when the flag is defined): an error there is one line and exit status 1."""
    try:
        check_config_args(sys.argv, default)
    except UserError as err:
        if _verbose(sys.argv):
            raise
        fail(str(err))
    config_flags.DEFINE_config_file("config", default, "Experiment config file (configs/<task>.py).")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with every error as one line (`--verbose`: the traceback)."""
    try:
        rest = FLAGS(argv)
        if "config" in FLAGS:
            FLAGS.config  # applies the overrides
        return rest
    except Exception as err:  # flags.Error, or a value the config rejects
        if _verbose(argv):
            raise
        fail(str(err) if isinstance(err, flags.Error) else f"bad flag value: {type(err).__name__}: {err}")


def name_counts(items: list[str], flag: str) -> dict[str, int]:
    """{'dps': 1, 'mcg': 1} from ['dps=1', 'mcg=1']; a ValueError naming the flag for any other form."""
    counts = {}
    for item in items:
        name, _, value = item.partition("=")
        if not name or not value.isdigit():
            raise ValueError(f"{flag} takes name=count pairs (e.g. dps=1,mcg=1), got {item!r}")
        counts[name] = int(value)
    return counts


def is_user_error(err: BaseException) -> bool:
    """Whether err reports something the user can fix (one line), not a bug (traceback)."""
    from apd.training.loop import TrainingStopped

    return isinstance(err, (ValueError, OSError, TrainingStopped, UserError))


def _guarded(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    def guarded(argv):
        try:
            main(argv)
        except Exception as err:
            if FLAGS.verbose or not is_user_error(err):
                raise
            fail(str(err))

    return guarded


def run(main: Callable[[list[str]], None]) -> None:
    """absl.app.run(main) with `parse_flags` and one-line user errors."""
    app.run(_guarded(main), flags_parser=parse_flags)
