"""`kaon user ...` and `kaon workspace add-member|remove-member|members`: who may do what.

A user holds a role in each workspace it belongs to: viewer (reads), member (also
writes) or admin (also its members, tokens and audit log). Its tokens
(`kaon token create NAME --user USER --role ROLE`) can do no more than that.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from kaon.cli.common import ClientOpt, JsonOpt, exit_on_error, make_client
from kaon.cli.render import console, print_json, rows_table
from kaon.sdk.admin import Users

app = typer.Typer(help="Users and their roles (instance admin).", no_args_is_help=True)


class Role(StrEnum):
    viewer = "viewer"
    member = "member"
    admin = "admin"


@app.command("create")
def create(
    name: str,
    admin: Annotated[bool, typer.Option("--admin", help="the instance's administrator")] = False,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create a user; make it a workspace member and give it a token to let it in."""
    with exit_on_error():
        user = Users(make_client(client)).create(name, admin)
    if json_:
        print_json(user)
    else:
        console.print(f"created user {user.name}{' (instance admin)' if user.is_admin else ''}")


@app.command("list")
def list_(client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """List users and their roles in workspaces."""
    with exit_on_error():
        users = Users(make_client(client)).list()
    if json_:
        print_json(users)
        return
    rows = [
        (
            u.name,
            "yes" if u.is_admin else "",
            "disabled" if u.disabled else "active",
            ", ".join(f"{ws}:{role}" for ws, role in sorted(u.workspaces.items())),
        )
        for u in users
    ]
    console.print(rows_table(("USER", "ADMIN", "STATE", "WORKSPACES"), rows))


@app.command("disable")
def disable(name: str, client: ClientOpt = None) -> None:
    """Disable a user: its tokens are refused until `kaon user enable` (nothing revoked)."""
    with exit_on_error():
        user = Users(make_client(client)).disable(name)
    console.print(f"disabled user {user.name}; its tokens are refused until it is enabled")


@app.command("enable")
def enable(name: str, client: ClientOpt = None) -> None:
    """Enable a disabled user: its tokens work again."""
    with exit_on_error():
        user = Users(make_client(client)).enable(name)
    console.print(f"enabled user {user.name}")


@app.command("delete")
def delete(name: str, client: ClientOpt = None) -> None:
    """Delete a user: its tokens, and the tokens they created, stop working at once."""
    with exit_on_error():
        user = Users(make_client(client)).delete(name)
    console.print(f"deleted user {user.name}; its tokens are revoked")


def add_member(
    workspace: str,
    user: str,
    role: Annotated[Role, typer.Option(help="viewer, member or admin")] = Role.member,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Add a user to a workspace, or change its role there (the workspace's admins)."""
    with exit_on_error():
        member = make_client(client).workspaces.add_member(workspace, user, role.value)
    if json_:
        print_json(member)
    else:
        console.print(f"{member.user} is {member.role} in workspace {member.workspace}")


def remove_member(workspace: str, user: str, client: ClientOpt = None) -> None:
    """Take a user out of a workspace; its tokens lose it from their next request on."""
    with exit_on_error():
        member = make_client(client).workspaces.remove_member(workspace, user)
    console.print(f"removed {member.user} from workspace {member.workspace}")


def members(workspace: str, client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """List a workspace's users and their roles."""
    with exit_on_error():
        found = make_client(client).workspaces.members(workspace)
    if json_:
        print_json(found)
    else:
        console.print(rows_table(("USER", "ROLE"), [(m.user, m.role) for m in found]))


def register(root: typer.Typer, workspace_app: typer.Typer) -> None:
    """Add `kaon user` and the membership commands of `kaon workspace`."""
    root.add_typer(app, name="user")
    workspace_app.command("add-member")(add_member)
    workspace_app.command("remove-member")(remove_member)
    workspace_app.command("members")(members)
