"""`dspex programs`: register programs and read the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from dspex._validation import describe_validation_error
from dspex.cli._common import (
    handles_errors,
    kafka_options,
    kafka_or_default,
    prefix_or_default,
    run,
)


@click.group()
def programs() -> None:
    """Register programs and show the registry (the compacted programs topic)."""


def _names(prefix: str | None) -> Any:
    from dspex.streams.topics import TopicNames

    return TopicNames(prefix_or_default(prefix))


@programs.command("register")
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--id", "program_id", required=True, help="Program id requests will name.")
@click.option("--version", type=int, help="Version number [default: the next one].")
@click.option("--description", default="", help="What changed in this version.")
@kafka_options
@handles_errors
def programs_register(
    spec_file: Path,
    program_id: str,
    version: int | None,
    description: str,
    bootstrap_servers: str | None,
    prefix: str | None,
) -> None:
    """Publish SPEC_FILE (a ProgramSpec as JSON) as a new version of a program."""
    from dspex.errors import ConfigurationError
    from dspex.programs.state import ProgramSpec
    from dspex.streams.registry import register_program

    try:
        spec = ProgramSpec.model_validate_json(spec_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read {spec_file}: {exc.strerror}") from exc
    except ValidationError as exc:
        problems = describe_validation_error(exc, whole="spec")
        raise ConfigurationError(f"{spec_file} is not a program spec: {problems}") from exc
    record = run(
        register_program(
            kafka_or_default(bootstrap_servers),
            _names(prefix),
            program_id,
            spec,
            version=version,
            description=description,
        )
    )
    click.echo(f"registered {record.program_id} version {record.version} ({spec.kind})")


@programs.command("list")
@kafka_options
@handles_errors
def programs_list(bootstrap_servers: str | None, prefix: str | None) -> None:
    """Every registered program with its active and known versions."""
    from dspex.streams.registry import load_catalog

    catalog = run(load_catalog(kafka_or_default(bootstrap_servers), _names(prefix)))
    active = catalog.programs()
    if not active:
        click.echo("no programs registered")
    for program_id, version in active.items():
        record = catalog.record(program_id)
        known = ", ".join(str(v) for v in catalog.versions(program_id))
        click.echo(f"{program_id:<24} active v{version:<4} {record.spec.kind:<18} versions {known}")


@programs.command("show")
@click.argument("program_id")
@click.option("--version", type=int, help="Version [default: the active one].")
@kafka_options
@handles_errors
def programs_show(
    program_id: str, version: int | None, bootstrap_servers: str | None, prefix: str | None
) -> None:
    """Print a program version's record as JSON."""
    from dspex.streams.registry import load_catalog

    catalog = run(load_catalog(kafka_or_default(bootstrap_servers), _names(prefix)))
    click.echo(catalog.record(program_id, version).model_dump_json(by_alias=True, indent=2))
