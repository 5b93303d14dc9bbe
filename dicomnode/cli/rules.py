"""``rules test``: which pipelines and routes files would trigger, and why.

:func:`check_files` is the one rule tester: the command prints its verdicts, and the
web page's rule tester (:mod:`dicomnode.web.ruletest`) is given it by the command
that serves the page.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dicomnode.cli.app import NodeGroup, settings_of
from dicomnode.config import Settings
from dicomnode.errors import DicomnodeError

if TYPE_CHECKING:
    from dicomnode.web.ruletest import Verdict

__all__ = ["check_files", "rules"]


def check_files(settings: Settings, files: Sequence[Path], calling_ae: str | None) -> list[Verdict]:
    """Each file's verdict under ``settings``' pipelines and routes, in order.

    The header walk of ingest (so a file the node would refuse says why), then each
    rule on the attributes the scheduler sees for the file's series.
    """
    from dicomnode.receive.inspect import inspect_instance
    from dicomnode.schedule.plan import compile_plan
    from dicomnode.schedule.rules import rule_attributes
    from dicomnode.web.ruletest import RuleEntry, Verdict

    plan = compile_plan(settings)
    rules = [("pipeline", p.name, m) for p, m in plan.pipelines]
    rules += [("route", r.name, m) for r, m in plan.routes]
    limits = (settings.node.max_inflated_bytes, settings.node.max_elements)
    verdicts = []
    for path in files:
        with tempfile.TemporaryDirectory() as scratch:
            try:
                info = inspect_instance(path, Path(scratch), *limits)
            except (OSError, DicomnodeError) as exc:
                verdicts.append(Verdict(str(path), refused=str(exc)))
                continue
        attrs = rule_attributes(info.attributes.to_json(), calling_ae)
        entries = []
        for kind, name, match in rules:
            result = match.evaluate(attrs)
            entries.append(RuleEntry(kind, name, result.matched, result.explain()))
        verdicts.append(
            Verdict(str(path), None, info.series_instance_uid, info.modality or "", tuple(entries))
        )
    return verdicts


@click.group(cls=NodeGroup)
def rules() -> None:
    """Check routing and pipeline rules."""


@rules.command("test")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--calling-ae", default=None, help="Calling AE title to assume (CallingAETitle).")
@click.pass_context
def rules_test(ctx: click.Context, files: tuple[Path, ...], calling_ae: str | None) -> None:
    """Show which pipelines and routes these files would trigger, and why."""
    settings = settings_of(ctx)
    from dicomnode.send.scu import collect_files

    if not settings.pipelines and not settings.routes:
        click.echo("no pipelines or routes configured")
        return
    unreadable = 0
    for verdict in check_files(settings, collect_files(files), calling_ae):
        if verdict.refused is not None:
            click.echo(f"{verdict.name}: the node would refuse it: {verdict.refused}")
            unreadable += 1
            continue
        click.echo(f"{verdict.name}:")
        for entry in verdict.entries:
            click.echo(f"  {entry.kind} {entry.name}: {'MATCH' if entry.matched else 'no match'}")
            for line in entry.explanation.splitlines():
                click.echo(f"    {line}")
    if unreadable:
        ctx.exit(1)
