"""Config files by path or by name.

In a checkout a config is a path, `configs/resnet50.py[:arg]`. Installed from a wheel, the same
files ship as the package `imagenot_jax.configs`, so `--config resnet50`, `--config resnet50.py`,
`--config suites/imagenot_study` or `--config configs/resnet50.py` (from any directory) all
name `imagenot_jax/configs/resnet50.py`. An existing file always wins over a name.

Only standard-library imports: every command parses its flags through this.
"""

from __future__ import annotations

import difflib
import importlib.util
import pathlib
import sys
from collections.abc import Callable, Sequence

from absl import flags

from imagenot_jax.errors import UserError

PACKAGE = "imagenot_jax.configs"


def package_dir(package: str = PACKAGE) -> pathlib.Path:
    """The folder of an installed (or checked-out) config package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"config package {package} is not installed")
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def known_configs(package: str = PACKAGE) -> list[str]:
    """Names of the config files of the package: `resnet50`, `suites/imagenot_study`, ..."""
    root = package_dir(package)
    return sorted(
        str(p.relative_to(root).with_suffix(""))
        for p in root.rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    )


def resolve(value: str, package: str = PACKAGE) -> str:
    """`path[:arg]` unchanged where the path is a file, else the packaged file it names."""
    path, sep, arg = value.partition(":")
    if "://" in value:
        return value
    if pathlib.Path(path).is_file():  # absolute: the command may chdir or spawn processes
        return f"{pathlib.Path(path).expanduser().absolute()}{sep}{arg}"
    name = path.removesuffix(".py")
    prefix = package.rsplit(".", 1)[-1] + "/"  # `configs/` of the checkout's spelling
    name = name.removeprefix(prefix)
    candidate = package_dir(package) / f"{name}.py"
    if candidate.is_file():
        return f"{candidate}{sep}{arg}"
    known = known_configs(package)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known)}"
    raise UserError(f"config {path!r}: no such file, nor a config of {package} ({hint})")


def resolve_argv(argv: Sequence[str], names: Sequence[str], package: str = PACKAGE) -> list[str]:
    """argv with the values of the config-file flags `names` resolved (`--config X`,
    `--config=X`); overrides such as `--config.optim.lr=0.1` are left alone."""
    out = list(argv)
    for i, arg in enumerate(out):
        for name in names:
            flag = f"--{name}"
            if arg.startswith(flag + "="):
                out[i] = f"{flag}={resolve(arg.removeprefix(flag + '='), package)}"
            elif arg == flag and i + 1 < len(out):
                out[i + 1] = resolve(out[i + 1], package)
    return out


def resolve_argv_or_exit(
    argv: Sequence[str], names: Sequence[str], package: str = PACKAGE
) -> list[str]:
    """resolve_argv, a bad name a one-line error with exit code 2."""
    try:
        return resolve_argv(argv, names, package)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def flags_parser(*names: str, package: str = PACKAGE) -> Callable[[list[str]], list[str]]:
    """An absl `app.run(..., flags_parser=...)` that resolves config names first, and turns the
    user's errors while the flags parse into one line on stderr and exit code 2 (see
    `user_message`): a bad config argument or file, a bad override value, an unknown flag."""

    def parse(argv: list[str]) -> list[str]:
        argv = resolve_argv_or_exit(argv, names, package)
        try:
            rest = flags.FLAGS(argv)
            for name in names:
                _raise_deferred_load_error(flags.FLAGS[name].value)
        except Exception as e:  # re-raised below unless it is the user's
            message = user_message(e, argv)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
        return rest

    return parse


def _raise_deferred_load_error(value: object) -> None:
    """config_flags keeps an OSError raised while a config file loads (a MissingInputError such
    as transfer's missing `init=` workdir included) in a placeholder that raises on first use:
    use it now, while the flags parse, rather than inside the command."""
    hasattr(value, "lock")  # the placeholder raises OSError (from the load error) on any access


# config_flags re-raises a TypeError/ValueError from get_config() as the same type with this
# prefix and the traceback in the message; absl then wraps it in an IllegalFlagValueError.
_CONFIG_FILE_ERROR = "Error whilst parsing config file"
# What config_flags and absl wrap a get_config() error in: its copy (same type), absl's flag
# error, and the OSError of a config that failed to load (raised on first use).
_WRAPPERS = (UserError, flags.Error, OSError)


def user_message(error: BaseException, argv: Sequence[str] = ()) -> str | None:
    """The one-line message of a user's error raised while the flags parse, else None (a bug:
    it keeps its traceback). The user's: a UserError anywhere in the chain (its innermost
    message: config_flags copies it with a traceback), absl's flags.Error about a flag value
    or name (`--config.optim.lr=abc`) that no get_config() exception caused, or an override of
    a field the config does not have (`--config.optim.lrr=1`)."""
    chain = _chain(error)
    user = [i for i, e in enumerate(chain) if isinstance(e, UserError)]
    # Only through the wrappers config_flags and absl put around it: an exception raised while
    # a UserError was handled is a bug of the handler.
    if user and all(isinstance(e, _WRAPPERS) for e in chain[: user[-1]]):
        return str(chain[user[-1]])
    if isinstance(error, flags.Error) and not any(_CONFIG_FILE_ERROR in str(e) for e in chain):
        return _one_line(str(error))
    if isinstance(error, AttributeError | KeyError | IndexError) and _raised_in(
        error, _CONFIG_PATH
    ):
        return _unknown_field_message(error, argv)
    return None


# config_flags looks an override's dotted path up in the config here (AttributeError, KeyError
# or IndexError for a field the config lacks).
_CONFIG_PATH = str(pathlib.Path("ml_collections", "config_flags", "config_path.py"))


def _raised_in(error: BaseException, filename_suffix: str) -> bool:
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_filename.endswith(filename_suffix):
            return True
        frame = frame.tb_next
    return False


def _unknown_field_message(error: BaseException, argv: Sequence[str]) -> str:
    """`--config.optim.lrr: no such config field ('lrr'; Did you mean "lr" ...?)`."""
    detail: object = error
    while isinstance(detail, BaseException):  # ConfigDict raises AttributeError(KeyError(...))
        detail = detail.args[0] if detail.args else str(detail)
    detail = _one_line(str(detail))
    missing = detail.split(";")[0].strip("'\" ")
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--") and "." in a.split("=")[0]]
    named = [a for a in overrides if missing in a.split(".")[1:]]
    flag = named[0] if named else "override"
    return f"{flag}: no such config field ({detail})"


def _one_line(message: str) -> str:
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and its causes/contexts, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
