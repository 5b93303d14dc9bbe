"""``rules test``: which pipelines and routes files would trigger, and why."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from dicomnode.cli.app import NodeGroup, settings_of
from dicomnode.errors import DicomnodeError

__all__ = ["rules"]


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
    from dicomnode.receive.inspect import inspect_instance
    from dicomnode.schedule.plan import compile_plan
    from dicomnode.schedule.rules import rule_attributes
    from dicomnode.send.scu import collect_files

    plan = compile_plan(settings)
    entries = [("pipeline", p.name, m) for p, m in plan.pipelines]
    entries += [("route", r.name, m) for r, m in plan.routes]
    if not entries:
        click.echo("no pipelines or routes configured")
        return
    unreadable = 0
    limits = (settings.node.max_inflated_bytes, settings.node.max_elements)
    for path in collect_files(files):
        # The header walk of ingest, so a rule means here what it means in the scheduler.
        with tempfile.TemporaryDirectory() as scratch:
            try:
                info = inspect_instance(path, Path(scratch), *limits)
            except (OSError, DicomnodeError) as exc:
                click.echo(f"{path}: the node would refuse it: {exc}")
                unreadable += 1
                continue
        attrs = rule_attributes(info.attributes.to_json(), calling_ae)
        click.echo(f"{path}:")
        for kind, name, match in entries:
            result = match.evaluate(attrs)
            verdict = "MATCH" if result.matched else "no match"
            click.echo(f"  {kind} {name}: {verdict}")
            for line in result.explain().splitlines():
                click.echo(f"    {line}")
    if unreadable:
        ctx.exit(1)
