"""Commands about models: ``models``, ``train``, ``evaluate`` and ``demo-data``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dicomnode.cli.app import (
    NodeCommand,
    print_table,
    progress_bar,
    settings_of,
    start_logging,
)
from dicomnode.config import Settings

__all__ = ["demo_data", "evaluate", "models", "train"]


@click.command(cls=NodeCommand)
@click.pass_context
def models(ctx: click.Context) -> None:
    """List the models this installation can run, with their views."""
    from dicomnode.models.registry import load_model, model_sources

    settings = settings_of(ctx)
    rows = []
    for name, source in sorted(model_sources(settings.model_dirs).items()):
        try:
            model = load_model(name, "cpu", settings.model_dirs)
        except Exception as exc:  # a broken third-party model must not hide the others
            rows.append((name, "?", "", "", source, f"cannot load: {exc}"))
            continue
        views = " ".join(f"{v.name}{'*' if v.required else ''}" for v in model.views)
        outputs = ", ".join([lb.name for lb in model.labels] + [c.name for c in model.classes])
        rows.append((name, model.version, views, outputs, source, model.description))
    columns = ("model", "version", "views (* required)", "labels / classes", "from", "about")
    print_table(columns, rows, width=200)


def _trainable(name: str, settings: Settings) -> Any:
    from dicomnode.models.device import resolve_device
    from dicomnode.models.registry import load_model
    from dicomnode.models.training import Trainable

    model = load_model(name, resolve_device(settings.worker.device), settings.model_dirs)
    if not isinstance(model, Trainable):
        raise click.ClickException(f"model {name!r} cannot be trained or evaluated here")
    return model


def _labelled(data: Path, model: Any) -> list[Any]:
    from dicomnode.worker.training_data import load_labelled_studies

    with progress_bar() as bar:
        task = bar.add_task("reading studies", total=None)
        studies, report = load_labelled_studies(
            data, model, lambda done, total: bar.update(task, completed=done, total=total)
        )
    for reason, count in sorted(report.not_applicable.items()):
        click.echo(f"skipped {count} studies: {reason}")
    click.echo(f"{report.studies} studies, {report.segments} ground-truth segments")
    if not studies:
        raise click.ClickException(f"no study under {data} fits model {model.name!r}")
    return studies


#: Where the labelled studies come from: a folder, or (``--generator``) a model's generator.
_DATA = click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True),
    help="Folder of DICOM images and DICOM SEG labels.",
)


@click.command(cls=NodeCommand)
@click.argument("model_name", metavar="MODEL")
@_DATA
@click.option(
    "--generator",
    metavar="NAME",
    help="Train on studies a generator makes in memory instead of --data (models that have "
    "one: ct-lesion-seg --generator anatomical); validation and test studies come from it too.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("trained"),
    show_default=True,
    help="Folder for the weights, metrics and model card.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the split and training.")
@click.option("--max-epochs", type=click.IntRange(min=1), default=None,
              help="Cap the model's epoch limit (default: the model's own).")  # fmt: skip
@click.pass_context
def train(
    ctx: click.Context,
    model_name: str,
    data: Path | None,
    generator: str | None,
    out: Path,
    seed: int,
    max_epochs: int | None,
) -> None:
    """Train MODEL from scratch on DICOM + SEG data (or a generator's); write weights and a card."""
    from dicomnode.models.training import split_by_patient

    if (data is None) == (generator is None):
        raise click.UsageError("give either --data or --generator")
    settings = settings_of(ctx)
    start_logging(ctx, settings)
    model = _trainable(model_name, settings)
    if generator is not None:
        _train_generated(model, generator, out, seed, max_epochs)
        return
    assert data is not None
    split = split_by_patient(_labelled(data, model), seed=seed)
    click.echo(f"split by patient: {split.counts()}")
    cap = {} if max_epochs is None else {"max_epochs": max_epochs}
    record = model.fit(split.train, split.validation, seed=seed, progress=click.echo, **cap)
    metrics = model.evaluate(split.test)
    _write_trained(out, model, data, split, seed, record, metrics)
    _print_metrics(metrics, "test split")
    click.echo(f"weights, metrics and model card written to {out}/")


def _train_generated(
    model: Any, generator: str, out: Path, seed: int, max_epochs: int | None
) -> None:
    data = _generated_data(model, generator)
    record, test = model.fit_generated(data, seed=seed, progress=click.echo, max_epochs=max_epochs)
    click.echo(f"evaluating {len(test)} held-out test studies")
    metrics = model.evaluate(test)
    counts = {
        "train": record["train_studies"],
        "validation": record["validation_studies"],
        "test": record["test_studies"],
    }
    source = f"Studies made in memory by the `{generator}` generator (one patient each)."
    _write_trained(out, model, source, counts, seed, record, metrics)
    _print_metrics(metrics, "test studies")
    click.echo(f"weights, metrics and model card written to {out}/")


def _generated_data(model: Any, generator: str) -> Any:
    from dicomnode.synth.generators import generated_data

    try:
        return generated_data(model.name, generator)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _write_trained(
    out: Path, model: Any, data: Path | str, split: Any, seed: int, record: Any, metrics: Any
) -> None:
    """Write the weights, the metrics (JSON) and the model card of a trained model."""
    import datetime
    import json

    from dicomnode.models.training import model_card

    out.mkdir(parents=True, exist_ok=True)
    model.save(out / f"{model.name}.pt")
    counts = split if isinstance(split, dict) else split.counts()
    today = datetime.date.today().isoformat()
    (out / f"{model.name}.json").write_text(json.dumps(
        {"model": model.name, "version": model.version, "date": today, "seed": seed,
         "split": counts, "training": record, "test_metrics": metrics},
        indent=2, default=str) + "\n")  # fmt: skip
    (out / f"{model.name}.md").write_text(model_card(
        model, description=model.description,
        data=data if isinstance(data, str) else f"DICOM images and SEG labels from `{data}`.",
        split=split, seed=seed, record=record, metrics=metrics, date=today))  # fmt: skip


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    table = Table("metric", "value", title=title)
    for key, value in sorted(metrics.items()):
        table.add_row(key, f"{value:.4f}")
    Console().print(table)


@click.command(cls=NodeCommand)
@click.argument("model_name", metavar="MODEL")
@_DATA
@click.option(
    "--generator",
    metavar="NAME",
    help="Evaluate on the held-out test studies `train --generator NAME --seed SEED` "
    "made, instead of --data.",
)
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="Evaluate every study (a held-out folder), not only the test split.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the split.")
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A pipeline option the model gets, as in a pipeline's options table "
    "(e.g. weights=anatomical for ct-lesion-seg); repeatable.",
)
@click.pass_context
def evaluate(
    ctx: click.Context,
    model_name: str,
    data: Path | None,
    generator: str | None,
    every: bool,
    seed: int,
    options: tuple[str, ...],
) -> None:
    """Print MODEL's metrics on the test split of DATA (or on all of it)."""
    from dicomnode.models.training import split_by_patient

    if (data is None) == (generator is None):
        raise click.UsageError("give either --data or --generator")
    chosen_options = _options(options)
    settings = settings_of(ctx)
    start_logging(ctx, settings)
    model = _trainable(model_name, settings)
    if generator is not None:
        source = _generated_data(model, generator)
        click.echo(f"generating the {generator} generator's test studies of seed {seed}")
        chosen = model.generated_studies(source, seed, "test")
        title = f"{len(chosen)} {generator} studies"
    else:
        assert data is not None
        studies = _labelled(data, model)
        chosen = studies if every else list(split_by_patient(studies, seed=seed).test)
        title = f"{len(chosen)} studies"
    chosen = [_with_options(s, chosen_options) for s in chosen]
    try:
        metrics = model.evaluate(chosen)
    except ValueError as exc:  # a bad option value, named by the model
        raise click.ClickException(str(exc)) from None
    _print_metrics(metrics, title)


def _options(pairs: tuple[str, ...]) -> dict[str, str]:
    """KEY=VALUE pairs as a pipeline's options table (values as text, as TOML strings)."""
    options = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--option")
        options[key.strip()] = value.strip()
    return options


def _with_options(labelled: Any, options: dict[str, str]) -> Any:
    """The labelled study with these options for the model (a pipeline's would be)."""
    import dataclasses

    if not options:
        return labelled
    study = dataclasses.replace(labelled.study, options={**labelled.study.options, **options})
    return dataclasses.replace(labelled, study=study)


@click.command("demo-data", cls=NodeCommand)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--ct", default=2, show_default=True, help="CT studies (lesions, body).")
@click.option("--mg", default=2, show_default=True, help="4-view mammography studies.")
@click.option("--cxr", default=2, show_default=True, help="Chest PA + lateral studies.")
@click.option("--seed", default=0, show_default=True, help="First seed; study i uses seed+i.")
@click.option("--ct-slices", default=120, show_default=True, help="Slices per CT series.")
@click.option("--ct-size", default=512, show_default=True, help="Rows and columns of a CT slice.")
@click.option("--ct-thickness", default=1.0, show_default=True, help="CT slice spacing, mm.")
@click.option(
    "--ct-anatomical",
    is_flag=True,
    help="CT from the anatomical generator (organs, contrast phases, varied scanners) "
    "instead of the simple phantom; --ct-thickness is then not used.",
)
@click.option("--mg-rows", default=512, show_default=True, help="Rows of a mammogram.")
@click.option(
    "--cxr-size", default=512, show_default=True, help="Rows and columns of a chest image."
)
@click.pass_context
def demo_data(ctx: click.Context, /, out: Path, **counts: Any) -> None:
    """Write synthetic studies with DICOM SEG ground truth to OUT (to try or train the node)."""
    from dicomnode.synth.studies import DemoOptions, write_demo_data

    start_logging(ctx)
    options = DemoOptions(**counts)
    with progress_bar() as bar:
        task = bar.add_task("writing studies", total=options.total)
        written = write_demo_data(out, options, lambda: bar.advance(task))
    click.echo(f"{written} studies written to {out}/ (ground truth as DICOM SEG in each study)")
