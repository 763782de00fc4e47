"""``ptm hub``: torch.hub repositories, with a trust policy that never prompts."""

from __future__ import annotations

import click

from ..errors import EXIT_OK
from .common import CONTEXT, note, stdout_is_data, writer
from .options import format_option


@click.group(context_settings=CONTEXT)
def hub() -> None:
    """Models from torch.hub repositories, with a trust policy that never prompts.

    REPO is OWNER/NAME[:REF] (a GitHub repository at a branch, tag or commit)
    or a local directory holding a hubconf.py. A repository runs its own code,
    so ptm refuses one that is not trusted (exit 2) instead of asking: trust
    it for one run with --trust-repo or for good with `ptm hub trust REPO`.
    A repository cached at an explicit REF loads without any network call.
    """


trust_option = click.option("--trust-repo", is_flag=True, help="Run this repository's code even if not trusted yet.")


@hub.command("list", context_settings=CONTEXT)
@click.argument("repo")
@trust_option
@format_option
def hub_list(repo: str, trust_repo: bool, fmt: str | None) -> int:
    """The entry points REPO offers."""
    from ..hub import list_entrypoints, parse_repo

    with stdout_is_data() as out:
        names = list_entrypoints(parse_repo(repo), trust_repo=trust_repo)
        with writer(out, fmt, columns=["entry"]) as records:
            for name in names:
                records.write({"entry": name})
    return EXIT_OK


@hub.command("help", context_settings=CONTEXT)
@click.argument("repo")
@click.argument("entry")
@trust_option
def hub_help(repo: str, entry: str, trust_repo: bool) -> int:
    """Print the docstring of REPO's ENTRY."""
    from ..hub import entry_help, parse_repo

    with stdout_is_data() as out:
        text = entry_help(parse_repo(repo), entry, trust_repo=trust_repo)
        out.write((text or f"{entry} has no docstring") + "\n")
    return EXIT_OK


@hub.command("load", context_settings=CONTEXT)
@click.argument("repo")
@click.argument("entry")
@click.option("--arg", "args", multiple=True, metavar="KEY=VALUE", help="Argument for the entry point (repeatable).")
@trust_option
@format_option
def hub_load(repo: str, entry: str, args: tuple[str, ...], trust_repo: bool, fmt: str | None) -> int:
    """Load REPO's ENTRY and report its class, parameter count and origin.

    \b
    Example (the book's hub.load("pytorch/vision:v0.10.0", "resnet18", pretrained=True)):
      ptm hub load pytorch/vision:v0.10.0 resnet18 --arg pretrained=true
    """
    from ..hub import load_model, parse_kwargs, parse_repo

    parsed, kwargs = parse_repo(repo), parse_kwargs(list(args))
    with stdout_is_data() as out:
        _, info = load_model(parsed, entry, kwargs=kwargs, trust_repo=trust_repo)
        columns = ["repo", "entry", "class", "params", "source", "trusted_by"]
        with writer(out, fmt, columns=columns) as records:
            records.write(
                {
                    "repo": info.repo,
                    "entry": info.entry,
                    "class": info.class_name,
                    "params": info.num_params,
                    "source": info.source,
                    "trusted_by": info.trusted_by,
                }
            )
    return EXIT_OK


@hub.command("trust", context_settings=CONTEXT)
@click.argument("repo")
def hub_trust(repo: str) -> int:
    """Record OWNER/NAME as trusted (in the list torch.hub itself keeps)."""
    from ..hub import parse_repo, trust

    parsed = parse_repo(repo)
    added = trust(parsed)
    note(f"{parsed.slug} {'is now trusted' if added else 'was already trusted'}")
    return EXIT_OK
