"""azd postdeploy hook: subscribe the rotation_check function to the vault's secret events.

Why after deploy: an Event Grid subscription with an Azure Function endpoint is validated when
it is created, so the function must already exist. `azd provision` creates the Function App
empty; only `azd deploy` puts rotation_check in it. Bicep therefore creates the system topic on
the vault, and this hook adds the subscription once the function is listed. Idempotent: the
create call is a create-or-update.

Reads from the azd environment: AZURE_SUBSCRIPTION_ID (azd's own), and the outputs of
infra/main.bicep AZURE_RESOURCE_GROUP, EVENT_GRID_SYSTEM_TOPIC_NAME, AZURE_FUNCTION_APP_RESOURCE_ID.
Needs the az CLI signed in. Every az call names --subscription: the subscription az shows as its
default may be another one than azd deploys to (anyone with several has met this).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

FUNCTION_NAME = "rotation_check"
SUBSCRIPTION_NAME = "rotation-check"
EVENT_TYPE = "Microsoft.KeyVault.SecretNewVersionCreated"
# Flex Consumption lists a freshly deployed function after its first indexing; give it a few minutes.
WAIT_FOR_FUNCTION_S = 300
POLL_S = 15
# What ARM says for a function the app has not listed yet: the only answer worth waiting on.
# Anything else (not signed in, 403, a wrong subscription) fails at once with az's own message.
NOT_INDEXED_YET = re.compile(r"\b(ResourceNotFound|NotFound)\b")


Az = Callable[..., subprocess.CompletedProcess[str]]


def az(*args: str) -> subprocess.CompletedProcess[str]:
    """The one place this hook runs the Azure CLI; tests pass a recorded one instead."""
    exe = shutil.which("az")
    if exe is None:
        raise SystemExit("rotation-subscription: the az CLI is required; install it and run `az login`")
    return subprocess.run([exe, *args, "--output", "none"], capture_output=True, text=True, check=False)  # noqa: S603


def require(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SystemExit(f"rotation-subscription: {name} is not set; run `azd provision` first")
    return value


def wait_until_indexed(
    run: Az,
    function_id: str,
    subscription: str,
    *,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> None:
    """Poll `az resource show` until the function is listed; wait only while ARM says it is not found."""
    deadline = clock() + WAIT_FOR_FUNCTION_S
    while True:
        shown = run("resource", "show", "--ids", function_id, "--subscription", subscription)
        if shown.returncode == 0:
            return
        if not NOT_INDEXED_YET.search(shown.stderr):
            raise SystemExit(
                f"rotation-subscription: `az resource show` for {FUNCTION_NAME} failed "
                f"(subscription {subscription}):\n{shown.stderr.strip()}"
            )
        if clock() > deadline:
            raise SystemExit(
                f"rotation-subscription: {FUNCTION_NAME} is not listed on the Function App after "
                f"{WAIT_FOR_FUNCTION_S} s; check the deployment, then run `azd hooks run postdeploy`"
            )
        print(f"rotation-subscription: waiting for {FUNCTION_NAME} to be indexed ...")
        sleep(POLL_S)


def subscribe(
    env: Mapping[str, str],
    run: Az = az,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Wait until rotation_check is listed on the app, then create (or update) the subscription."""
    subscription = require(env, "AZURE_SUBSCRIPTION_ID")
    group = require(env, "AZURE_RESOURCE_GROUP")
    topic = require(env, "EVENT_GRID_SYSTEM_TOPIC_NAME")
    function_id = f"{require(env, 'AZURE_FUNCTION_APP_RESOURCE_ID')}/functions/{FUNCTION_NAME}"

    wait_until_indexed(run, function_id, subscription, sleep=sleep, clock=clock)
    done = run(
        "eventgrid", "system-topic", "event-subscription", "create",
        "--subscription", subscription,
        "--resource-group", group,
        "--system-topic-name", topic,
        "--name", SUBSCRIPTION_NAME,
        "--endpoint-type", "azurefunction",
        "--endpoint", function_id,
        "--included-event-types", EVENT_TYPE,
        "--event-delivery-schema", "eventgridschema",
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"rotation-subscription: creating the subscription failed:\n{done.stderr.strip()}")
    print(f"rotation-subscription: {topic} delivers {EVENT_TYPE} to {FUNCTION_NAME}")


def main() -> int:
    subscribe(os.environ)
    return 0


if __name__ == "__main__":
    sys.exit(main())
