"""Tables of published results (CSV or JSON) as result sets of `imagenot_jax.rank`.

A table lists one model per row: `model`, `top1`, and optionally `top5`, `n` (evaluated
examples) and `year` (of the architecture's paper); other columns are ignored, column names are
case-insensitive. Accuracies are percent or fractions, decided per column: a column with any
value above 1 is percent (divided by 100, every value then in [0, 100]); otherwise every value
is a fraction in [0, 1]. A row without `n` gets no Clopper-Pearson interval; a row without
`year` takes the paper year of its architecture family where the zoo knows it.

CSV: a header row, then one row per model. JSON: a list of row objects, or {"rows": [...]}
(numbers or numeric strings; null or "" is an empty cell). Models are matched across sets by the
`model` column. See docs/rank.md.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from etils import epath

from imagenot_jax.errors import MissingInputError, UserError
from imagenot_jax.rank import reference

TABLE_SUFFIXES = (".csv", ".json")
REQUIRED = ("model", "top1")
ACCURACIES = ("top1", "top5")


def is_table(path: str) -> bool:
    """Whether a path names a results table: a .csv file, or a .json file holding a list of rows
    or {"rows": [...]} (an eval JSON of imagenot_jax.evaluate is an object with a `model`)."""
    p = epath.Path(path)
    if p.suffix == ".csv":
        return not p.is_dir()
    if p.suffix != ".json" or not p.is_file():
        return False
    try:
        record = json.loads(p.read_text())
    except json.JSONDecodeError:
        return False  # reported as not valid JSON by the eval loader
    return isinstance(record, list) or (isinstance(record, dict) and "rows" in record)


def _rows(path: epath.Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row with lower-case keys) of every row; `where` names the row in messages."""
    if not path.exists():
        raise MissingInputError(f"{path}: not found (expected a results table)")
    text = path.read_text().removeprefix("\ufeff")  # a spreadsheet's byte-order mark
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise UserError(f"{path}: empty table; expected a header row with model,top1")
        rows = []
        for row in reader:
            if None in row:
                raise UserError(f"{path}: line {reader.line_num}: more cells than header columns")
            rows.append((f"line {reader.line_num}", row))
        columns = reader.fieldnames
    else:
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from e
        rows_of = record.get("rows") if isinstance(record, dict) else record
        if not isinstance(rows_of, list) or not all(isinstance(r, dict) for r in rows_of):
            raise UserError(f'{path}: expected a list of row objects or {{"rows": [...]}}')
        rows = [(f"rows[{k}]", row) for k, row in enumerate(rows_of)]
        columns = list(dict.fromkeys(key for _, row in rows for key in row))
    if not rows:
        raise UserError(f"{path}: empty table; expected one row per model")
    lower = [str(c).strip().lower() for c in columns]
    missing = [c for c in REQUIRED if c not in lower]
    if missing:
        raise UserError(
            f"{path}: no {' or '.join(missing)} column (has: {', '.join(map(str, columns))}); "
            "expected columns model, top1[, top5][, n][, year]"
        )
    return [(where, {str(k).strip().lower(): v for k, v in row.items()}) for where, row in rows]


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number(path: epath.Path, where: str, column: str, value: Any) -> float | None:
    if _empty(value):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise UserError(f"{path}: {where}, column {column}: {value!r} is not a non-negative number")
    return number


def _integer(path: epath.Path, where: str, column: str, value: Any) -> int | None:
    number = _number(path, where, column, value)
    if number is not None and (number != int(number) or (column == "n" and number < 1)):
        expected = "a positive integer" if column == "n" else "an integer"
        raise UserError(f"{path}: {where}, column {column}: {value!r} is not {expected}")
    return None if number is None else int(number)


def _scale(path: epath.Path, column: str, values: list[float | None]) -> float:
    """100 for a percent column (a value above 1), else 1; checks the range."""
    present = [v for v in values if v is not None]
    percent = any(v > 1 for v in present)
    if percent and max(present) > 100:
        raise UserError(
            f"{path}: column {column}: {max(present)} is above 100; expected percent in "
            "[0, 100] (a column with a value above 1 is read as percent) or fractions in [0, 1]"
        )
    return 100.0 if percent else 1.0


def load_table(spec: str, metric: str = "top1", label: str | None = None):
    """A results table file as a ResultSet (label: `label`, else the file's stem)."""
    from imagenot_jax.rank.ranking import ModelResult, ResultSet  # ranking imports this module

    path = epath.Path(spec)
    if metric not in ACCURACIES:
        raise UserError(f"{path}: a results table has top1/top5 only, not {metric}")
    rows = _rows(path)
    parsed, seen = [], {}
    for where, row in rows:
        name = row.get("model")
        if _empty(name):
            raise UserError(f"{path}: {where}, column model: empty; expected a model name")
        name = str(name).strip()
        if name in seen:
            raise UserError(f"{path}: {where}: duplicate model {name!r} (also {seen[name]})")
        seen[name] = where
        acc = {m: _number(path, where, m, row.get(m)) for m in ACCURACIES}
        if acc["top1"] is None:
            raise UserError(f"{path}: {where}, column top1: empty; expected an accuracy")
        n, year = (_integer(path, where, c, row.get(c)) for c in ("n", "year"))
        parsed.append((name, acc, n, year))
    if metric == "top5" and all(acc["top5"] is None for _, acc, _, _ in parsed):
        raise UserError(f"{path}: no top5 values; use --metric top1")
    scales = {m: _scale(path, m, [acc[m] for _, acc, _, _ in parsed]) for m in ACCURACIES}
    label = label or path.stem
    models = {}
    for name, acc, n, year in parsed:
        metrics = {m: v / scales[m] for m, v in acc.items() if v is not None}
        year = year or reference.year_of(name)
        models[name] = ModelResult(name, name, metrics, n, None, label, None, str(path), None, year)
    without_n = [name for name, _, n, _ in parsed if n is None]
    percent = [m for m in ACCURACIES if scales[m] != 1.0]
    notes = [
        f"{label}: published results from {path}"
        + (f" ({', '.join(percent)} read as percent)" if percent else " (fractions)")
    ]
    if without_n:
        which = "every model" if len(without_n) == len(parsed) else ", ".join(without_n)
        notes.append(f"{label}: no n for {which}: no Clopper-Pearson interval")
    return ResultSet(models, label, table=str(path), notes=notes)
