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

from absl import app

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
    """An absl `app.run(..., flags_parser=...)` that resolves config names first."""

    def parse(argv: list[str]) -> list[str]:
        return app.parse_flags_with_usage(resolve_argv_or_exit(argv, names, package))

    return parse
