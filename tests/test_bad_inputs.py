"""Bad inputs to every command line: each a one-line `error: ...` on stderr (no traceback) and
exit code 2, before anything is written.

The commands run as real subprocesses. They are started by one module fixture, two at a time
(2 cores), and each case's test checks its result: exit code, the start of the error line, no
traceback, and where the command would train, that no workdir was created. Most fail before
JAX compiles or data loads; a few need the tiny Fashion-MNIST or a converted checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

DEMO = "configs/demo.py"


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    module: str  # python -m MODULE, or "tfds" for TFDS's command line
    args: tuple[str, ...]  # {data}: fake Fashion-MNIST, {tmp}: the case's dir, {ckpt}/{damaged}
    start: str  # the error line starts with this
    code: int = 2
    writes_nothing: bool = False  # {tmp}/w (the workdir) must not exist afterwards
    prefix: str = "error: "  # of the error line; "": the last stderr line holds `start`


def train(case_id: str, *overrides: str, config: str = DEMO, start: str) -> Case:
    """imagenot_jax.main on `config` (the tiny Fashion-MNIST's data dir) with `overrides`."""
    args = ("--config", config, "--workdir={tmp}/w", "--config.data.data_dir={data}")
    args += ("--config.input.eval_batch_size=8", *overrides)  # 8 devices
    return Case(case_id, "imagenot_jax.main", args, start, writes_nothing=True)


def evaluate(case_id: str, *args: str, start: str) -> Case:
    return Case(case_id, "imagenot_jax.evaluate", args, start)


def rank(case_id: str, *args: str, start: str) -> Case:
    return Case(case_id, "imagenot_jax.rank", ("--out={tmp}/out", *args), start)


def suite(case_id: str, *args: str, start: str) -> Case:
    return Case(case_id, "imagenot_jax.suite", args, start)


def convert(case_id: str, *args: str, start: str) -> Case:
    return Case(case_id, "imagenot_jax.models.convert", args, start)


def curate(case_id: str, stage: str, *args: str, start: str) -> Case:
    return Case(case_id, f"curation.{stage}", ("--workdir={tmp}/cw", *args), start)


CASES = [
    # --- loading the config file ---------------------------------------------------------
    train(
        "config-missing",
        config="configs/nope.py",
        start="error: config 'configs/nope.py': no such file",
    ),
    train(
        "recipe-arg-misspelled",
        config="configs/resnet50.py:datset=imagenet",
        start="error: config argument 'datset=imagenet': expected 'dataset=<",
    ),
    train(
        "transfer-init-missing",
        config="configs/transfer.py:init={tmp}/nope,smoke",
        start="error: model.init={tmp}/nope: {tmp}/nope/config.json not found",
    ),
    train(
        "override-not-a-float",
        "--config.optim.lr=abc",
        start="error: flag --config.optim.lr=abc: could not convert string to float",
    ),
    train(
        "override-unknown-field",
        "--config.optim.lrr=0.1",
        start="error: --config.optim.lrr: no such config field ('lrr'; Did you mean \"lr\"",
    ),
    train(
        "override-unknown-section",
        "--config.optimm.lr=0.1",
        start="error: --config.optimm.lr: no such config field ('optimm'",
    ),
    train(
        "unknown-flag",
        "--learning_rate=0.1",
        start="error: Unknown command line flag 'learning_rate'",
    ),
    Case(
        "workdir-flag-missing",
        "imagenot_jax.main",
        ("--config", DEMO),
        "error: flag --workdir=None: Flag --workdir must have a value other than None",
    ),
    # --- ranges ---------------------------------------------------------------------------
    train(
        "batch-zero",
        "--config.input.global_batch_size=0",
        start="error: input.global_batch_size=0: expected >= 1",
    ),
    train(
        "steps-negative",
        "--config.schedule.num_steps=-3",
        start="error: schedule.num_steps=-3: expected >= 1",
    ),
    train(
        "epochs-zero", "--config.schedule.epochs=0", start="error: schedule.epochs=0: expected > 0"
    ),
    train("lr-negative", "--config.optim.lr=-1", start="error: optim.lr=-1.0: expected >= 0"),
    train(
        "weight-decay-negative",
        "--config.optim.weight_decay=-1e-4",
        start="error: optim.weight_decay=-0.0001: expected >= 0",
    ),
    train(
        "label-smoothing-one",
        "--config.optim.label_smoothing=1.0",
        start="error: optim.label_smoothing=1.0: expected < 1",
    ),
    train(
        "ema-decay-above-one",
        "--config.optim.ema_decay=1.5",
        start="error: optim.ema_decay=1.5: expected < 1",
    ),
    train(
        "mixup-negative",
        "--config.input.mixup_alpha=-0.2",
        start="error: input.mixup_alpha=-0.2: expected >= 0",
    ),
    train(
        "cutmix-negative",
        "--config.input.cutmix_alpha=-1.0",
        start="error: input.cutmix_alpha=-1.0: expected >= 0",
    ),
    train(
        "random-erase-above-one",
        "--config.input.random_erase=1.5",
        start="error: input.random_erase=1.5: expected <= 1",
    ),
    train(
        "checkpoint-keep-zero",
        "--config.checkpoint.keep=0",
        start="error: checkpoint.keep=0: expected >= 1",
    ),
    train(
        "checkpoint-every-zero",
        "--config.checkpoint.every_steps=0",
        start="error: checkpoint.every_steps=0: expected >= 1",
    ),
    train(
        "logging-every-zero",
        "--config.logging.every_steps=0",
        start="error: logging.every_steps=0: expected >= 1",
    ),
    train(
        "eval-resize-below-crop",
        "--config.input.eval_resize=20",
        start="error: input.eval_resize=20: expected >= input.eval_crop=28",
    ),
    train(
        "image-below-model-minimum",
        "--config.input.image_size=32",
        config="configs/alexnet.py:smoke",
        start="error: input.image_size=32: expected >= 63",
    ),
    train(
        "inception-aux-head-minimum",
        "--config.model.kwargs.aux_logits=True",
        config="configs/inception_v3.py:smoke",
        start="error: input.image_size=75: expected >= 299",
    ),
    train(
        "vit-input-not-its-built-size",
        "--config.input.image_size=48",
        config="configs/vit_b_16.py:smoke",
        start="error: input.image_size=48: expected 32 (vit_b_16 is built for 32 px inputs",
    ),
    # --- names ----------------------------------------------------------------------------
    train("model-unknown", "--config.model.name=resnet51", start="error: unknown model 'resnet51'"),
    train("dtype-unknown", "--config.model.dtype=float8", start="error: model.dtype='float8'"),
    train("optimizer-unknown", "--config.optim.name=adam", start="error: optim.name='adam'"),
    train(
        "schedule-unknown", "--config.schedule.name=linear", start="error: schedule.name='linear'"
    ),
    train("bn-mode-unknown", "--config.mesh.bn_mode=sync", start="error: mesh.bn_mode='sync'"),
    train(
        "trainable-unknown",
        "--config.optim.trainable=backbone",
        start="error: optim.trainable='backbone'",
    ),
    train(
        "auto-augment-unknown",
        "--config.input.auto_augment=autoaug",
        start="error: input.auto_augment must be None or one of",
    ),
    # --- relations ------------------------------------------------------------------------
    train(
        "batch-over-devices",
        "--config.input.global_batch_size=12",
        start="error: input.global_batch_size=12 is not divisible by the 8 devices",
    ),
    train(
        "eval-batch-over-devices",
        "--config.input.eval_batch_size=4",
        start="error: input.eval_batch_size=4 is not divisible by the 8 devices",
    ),
    train(
        "accum-steps-not-dividing",
        "--config.optim.grad_accum_steps=3",
        start="error: optim.grad_accum_steps=3 does not divide the per-device batch of 16",
    ),
    train(
        "warmup-not-below-epochs",
        "--config.schedule.warmup_epochs=4",
        start="error: schedule.epochs=4 must exceed schedule.warmup_epochs=4",
    ),
    train(
        "batch-above-examples",
        "--config.input.global_batch_size=128",
        start="error: input.global_batch_size=128 exceeds the 96 training examples",
    ),
    train(
        "dataset-not-prepared",
        "--config.data.data_dir={tmp}/empty",
        start="error: dataset 'fashion_mnist_local/all' is not prepared",
    ),
    # --- evaluate -------------------------------------------------------------------------
    evaluate("eval-workdir-missing", "--workdir={tmp}/nope", start="error: {tmp}/nope"),
    evaluate("eval-workdir-flag-missing", start="error: flag --workdir=None"),
    evaluate(
        "eval-step-not-int",
        "--workdir={ckpt}",
        "--step=last",
        start="error: flag --step=last: invalid literal for int()",
    ),
    evaluate("eval-step-missing", "--workdir={ckpt}", "--step=7", start="error: "),
    evaluate(
        "eval-batch-size-zero",
        "--workdir={ckpt}",
        "--batch_size=0",
        start="error: flag --batch_size=0: 0 is not a positive integer",
    ),
    evaluate(
        "eval-checkpoint-truncated",
        "--workdir={damaged}",
        start="error: checkpoint step 0 is damaged: {damaged}/checkpoints/0/state/",
    ),
    # --- rank -----------------------------------------------------------------------------
    rank("rank-no-sets", start="error: give two result sets with --a and --b"),
    rank(
        "rank-set-missing",
        "--a={tmp}/nope.json",
        "--b={tmp}/nope2.json",
        start="error: {tmp}/nope.json: not found (expected a workdir, an eval JSON",
    ),
    rank("rank-metric-unknown", "--metric=top7", start="error: flag --metric=top7"),
    # --- suite ----------------------------------------------------------------------------
    suite(
        "suite-config-missing",
        "--suite=configs/suites/nope.py",
        "--workdir={tmp}/s",
        start="error: config 'configs/suites/nope.py': no such file",
    ),
    suite(
        "suite-arg-unknown",
        "--suite=configs/suites/imagenot_study.py:bogus",
        "--workdir={tmp}/s",
        start="error: configs/suites/imagenot_study.py argument 'bogus'",
    ),
    suite(
        "suite-run-field-bad",
        "--suite=configs/suites/fashion_halves.py",
        "--suite.runs.resnet18.optim.lr=-0.4",
        "--workdir={tmp}/s",
        start="error: suite.runs.resnet18: optim.lr=-0.4: expected >= 0",
    ),
    # --- models.convert -------------------------------------------------------------------
    convert("convert-no-source", "--out={tmp}/o", start="error: give exactly one of --weights"),
    convert(
        "convert-weights-without-model",
        "--torch_weights={tmp}/x.pth",
        "--out={tmp}/o",
        start="error: --torch_weights needs --model",
    ),
    convert(
        "convert-recipe-arg-misspelled",
        "--model=resnet18",
        "--torch_weights={tmp}/x.pth",
        "--out={tmp}/o",
        "--config=configs/resnet50.py:datset=imagenet",
        start="error: config argument 'datset=imagenet'",
    ),
    # --- curation -------------------------------------------------------------------------
    curate(
        "curation-select-before-wordnet",
        "select",
        "--config=curation/configs/imagenot.py",
        start="error: {tmp}/cw/classes/candidates.parquet: not found",
    ),
    curate(
        "curation-config-missing",
        "run",
        "--config=curation/configs/nope.py",
        start="error: --config curation/configs/nope.py: curation/configs/nope.py is not a file",
    ),
    curate(
        "curation-config-arg-unknown",
        "run",
        "--config=curation/configs/imagenot.py:bogus",
        start="error: unknown config argument 'bogus'; expected 'smoke' or nothing",
    ),
    curate(
        "curation-override-unknown-field",
        "match",
        "--config=curation/configs/laionet.py",
        "--config.match.nope=1",
        start="error: a --config.FIELD override names no field of the config",
    ),
    Case(
        "curation-workdir-flag-missing",
        "curation.wordnet",
        ("--config=curation/configs/imagenot.py",),
        "error: flag --workdir=None: Flag --workdir must have a value other than None",
    ),
    # --- tfds build: TFDS's command line exits 1 after a traceback on any exception, except
    # absl's UsageError, which it prints after its own `USAGE:` line and exits with the error's
    # code: the builder's ManifestError is one (exit 2); the last stderr line is its message.
    Case(
        "tfds-build-manifest-missing",
        "tfds",
        ("build", "tfds_imagenot/imagenot", "--data_dir={tmp}/tfds", "--manual_dir={data}"),
        "no manifest found: expected",
        prefix="",
    ),
]


def _ids(case) -> str:
    return (case.values[0] if hasattr(case, "values") else case).id


def _command(case: Case) -> list[str]:
    if case.module == "tfds":
        return [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main", *case.args]
    return [sys.executable, "-m", case.module, *case.args]


def _fill(text: str, places: dict[str, pathlib.Path]) -> str:
    return text.format(**{k: str(v) for k, v in places.items()})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, fake_fashion_mnist) -> dict[str, pathlib.Path]:
    """A converter-written workdir (config.json + checkpoints/0) of the tiny demo model, and a
    copy whose checkpoint array files lost their second half."""

    from imagenot_jax.models import convert
    from imagenot_jax.train import trainer
    from tests.helpers import tiny_config

    root = tmp_path_factory.mktemp("bad_inputs_ckpt")
    config = tiny_config(fake_fashion_mnist)
    config.model.num_classes = 10
    model = trainer.build_model(config, 10)
    intact = convert.write_checkpoint(model, config, str(root / "intact"))
    damaged = root / "damaged"
    shutil.copytree(intact, damaged)
    arrays = [p for p in (damaged / "checkpoints" / "0" / "state").rglob("*") if p.is_file()]
    for path in arrays:
        if path.stat().st_size > 64:
            with path.open("r+b") as f:
                f.truncate(path.stat().st_size // 2)
    return {"ckpt": pathlib.Path(intact), "damaged": damaged}


@pytest.fixture(scope="module")
def results(tmp_path_factory, fake_fashion_mnist, checkpoints) -> dict[str, tuple]:
    """Every case run once, two at a time: id -> (CompletedProcess, places)."""
    cases = [c.values[0] if hasattr(c, "values") else c for c in CASES]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }

    def run(case: Case) -> tuple:
        tmp = tmp_path_factory.mktemp(case.id)
        places = {"tmp": tmp, "data": fake_fashion_mnist, **checkpoints}
        command = [_fill(a, places) for a in _command(case)]
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        return done, places

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip([c.id for c in cases], pool.map(run, cases), strict=True))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_bad_input_is_one_line_error(case: Case, results):
    done, places = results[case.id]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    context = f"{case.id}: exit {done.returncode}, stderr:\n{done.stderr[-3000:]}"
    assert done.returncode == case.code, context
    assert "Traceback" not in done.stderr, context
    start = _fill(case.start, places)
    if case.prefix:  # exactly one error line, and it says what the case expects
        errors = [line for line in lines if line.startswith(case.prefix)]
        assert len(errors) == 1 and errors[0].startswith(start), context
    else:
        assert lines and start in lines[-1], context
    if case.writes_nothing:
        assert not (places["tmp"] / "w").exists(), context


def test_the_table_covers_every_command_line():
    modules = {(c.values[0] if hasattr(c, "values") else c).module for c in CASES}
    assert len(CASES) >= 40
    for module in ("main", "evaluate", "rank", "suite", "models.convert"):
        assert f"imagenot_jax.{module}" in modules
    assert any(m.startswith("curation.") for m in modules) and "tfds" in modules
