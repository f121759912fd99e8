"""A stand-in for the Azure CLI, run as the `az` executable the hooks find on PATH.

It keeps the one rule of the real CLI that bit people with several subscriptions: a call that
names a resource group or a resource id goes to the subscription given with --subscription, or
else to az's *default* one, where that resource group does not exist. This stand-in therefore
refuses every such call that does not name the azd subscription, with the error az prints then.

State and a log of every call live in a JSON file named by STANDIN_AZ_STATE:
  subscriptions      {subscription id: tenant id} that `az login` knows
  default            az's default subscription (what `az account show` prints without --subscription)
  azd_subscription   the subscription azd deploys to
  not_indexed        how many `az resource show` calls still answer ResourceNotFound
  calls              every argument list, appended by each run
  created            event subscriptions created, as [resource group, topic, name]
  signed_in          who `az login` signed in: {"type": "user" | "servicePrincipal", "name", "id" (object id)},
                     or null (not signed in)
  access_tokens      answers to AzureCliCredential's `az account get-access-token --resource`, in order (the
                     last one repeats): {"token": <JWT>} or {"error": <what az prints, e.g. AADSTS501051>}
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


def fail(code: int, message: str) -> int:
    print(f"ERROR: {message}", file=sys.stderr)
    return code


def run(args: list[str], state: dict[str, Any]) -> int:
    state["calls"].append(args)
    subscription = option(args, "--subscription") or state["default"]
    signed_in = state.get("signed_in")
    if args[:2] == ["account", "show"] and option(args, "--query") == "user":
        if signed_in is None:
            return fail(1, "Please run 'az login' to setup account.")
        print(json.dumps({"name": signed_in["name"], "type": signed_in["type"]}))
        return 0
    if args[:3] == ["ad", "signed-in-user", "show"]:
        if signed_in is None or signed_in["type"] != "user":
            return fail(1, "/me request is only valid with delegated authentication flow.")
        print(signed_in["id"])
        return 0
    if args[:3] == ["ad", "sp", "show"]:
        if signed_in is None or option(args, "--id") != signed_in["name"]:
            return fail(3, f"Service principal '{option(args, '--id')}' doesn't exist")
        print(signed_in["id"])
        return 0
    if args[:2] == ["account", "get-access-token"] and "--resource" in args:
        answers = state.get("access_tokens") or [{"error": "Please run 'az login' to setup account."}]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if "error" in answer:
            return fail(1, answer["error"])
        print(
            json.dumps({"accessToken": answer["token"], "expires_on": int(time.time()) + 3600, "tokenType": "Bearer"})
        )
        return 0
    if args[:2] == ["account", "show"]:
        tenant = state["subscriptions"].get(subscription)
        if tenant is None:
            return fail(1, f"Subscription '{subscription}' not found. Check the spelling and casing and try again.")
        print(tenant)
        return 0
    if args[:2] == ["account", "get-access-token"]:
        tenant = state["subscriptions"].get(subscription)
        if tenant is None:
            return fail(1, f"Subscription '{subscription}' not found. Check the spelling and casing and try again.")
        print(f"stand-in-graph-token-for-{tenant}")
        return 0
    group_call = "--resource-group" in args or any("/resourceGroups/" in arg for arg in args)
    if group_call and subscription != state["azd_subscription"]:
        group = option(args, "--resource-group") or "rg-dev"
        return fail(3, f"(ResourceGroupNotFound) Resource group '{group}' could not be found.")
    if args[:2] == ["resource", "show"]:
        if state["not_indexed"] > 0:
            state["not_indexed"] -= 1
            return fail(3, f"(ResourceNotFound) The Resource '{option(args, '--ids')}' was not found.")
        return 0
    if args[:4] == ["eventgrid", "system-topic", "event-subscription", "create"]:
        created = [option(args, "--resource-group"), option(args, "--system-topic-name"), option(args, "--name")]
        state["created"].append(created)
        return 0
    return fail(2, f"the stand-in az does not know `az {' '.join(args[:4])}`")


def main() -> int:
    path = Path(os.environ["STANDIN_AZ_STATE"])
    state = json.loads(path.read_text(encoding="utf-8"))
    code = run(sys.argv[1:], state)
    path.write_text(json.dumps(state), encoding="utf-8")
    return code


def install(
    directory: Path,
    subscriptions: dict[str, str],
    *,
    default: str,
    azd_subscription: str,
    signed_in: dict[str, str] | None = None,
    access_tokens: list[dict[str, str]] | None = None,
) -> tuple[Path, Path]:
    """Put this stand-in on a fresh bin folder under ``directory`` as `az`; return its state file and the folder."""
    state = directory / "az-state.json"
    fresh = {
        "subscriptions": subscriptions,
        "default": default,
        "azd_subscription": azd_subscription,
        "not_indexed": 0,
        "calls": [],
        "created": [],
        "signed_in": signed_in,
        "access_tokens": access_tokens or [],
    }
    state.write_text(json.dumps(fresh), encoding="utf-8")
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "az"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "$@"\n')
    exe.chmod(0o755)
    return state, bin_dir


if __name__ == "__main__":
    sys.exit(main())
