"""The options of a job's parameters, one per `JobParams` field, shared by `toonq submit` and
`toonq matte`: `--bg-color`, `--format`, `--resolution`, `--refine-foreground`, `--mask-only`,
`--respect-input-alpha`, `--preset`, `--trim`, `--margin`, `--outline`, `--shadow`,
`--temporal-smoothing/--no-temporal-smoothing`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import Field, fields
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import click

from toonq.shared.job import HELP, JobParams

Command = Callable[..., Any]


def job_params_options(command: Command) -> Command:
    """Give `command` an option per job parameter. It receives the options given as one
    `job_options` dict, by field name: an option left out is absent, so that the receiver's
    default applies (`JobParams.with_defaults`, `ToonqClient.submit`)."""
    names = [param.name for param in fields(JobParams)]

    @functools.wraps(command)
    def with_job_options(*args: Any, **kwargs: Any) -> Any:
        given = {name: value for name in names if (value := kwargs.pop(name)) is not None}
        return command(*args, job_options=given, **kwargs)

    decorated: Command = with_job_options
    types = get_type_hints(JobParams)
    for param in reversed(fields(JobParams)):
        decorated = _option(param, types[param.name])(decorated)
    return decorated


def job_param_option(name: str) -> Callable[[Command], Command]:
    """The option of the one job parameter `name` (`toonq eval --resolution`): the command
    receives it under the field's name, None when left out."""
    (param,) = (param for param in fields(JobParams) if param.name == name)
    return _option(param, get_type_hints(JobParams)[name])


def _option(param: Field[Any], annotation: Any) -> Callable[[Command], Command]:
    flag = "--" + param.name.replace("_", "-")
    help = param.metadata[HELP]
    if annotation is bool:
        if param.default is True:
            # Left out, the option is None, and so absent: the receiver's default applies.
            return click.option(f"{flag}/--no-{flag[2:]}", default=None, help=help)
        return click.option(flag, is_flag=True, help=help)
    annotation = _without_none(annotation)
    if get_origin(annotation) is Literal:
        return click.option(flag, type=click.Choice(get_args(annotation)), help=help)
    return click.option(flag, type=annotation, help=help)


def _without_none(annotation: Any) -> Any:
    """`X` for `X | None`: an option left out is None anyway."""
    if get_origin(annotation) not in (Union, UnionType):
        return annotation
    (value_type,) = (arg for arg in get_args(annotation) if arg is not NoneType)
    return value_type
