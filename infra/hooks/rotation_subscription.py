"""azd postdeploy hook: subscribe the rotation_check function to the vault's secret events.

Why after deploy: an Event Grid subscription with an Azure Function endpoint is validated when
it is created, so the function must already exist. `azd provision` creates the Function App
empty; only `azd deploy` puts rotation_check in it. Bicep therefore creates the system topic on
the vault, and this hook adds the subscription once the function is listed. Idempotent: the
create call is a create-or-update.

Reads from the azd environment (outputs of infra/main.bicep): AZURE_RESOURCE_GROUP,
EVENT_GRID_SYSTEM_TOPIC_NAME, AZURE_FUNCTION_APP_RESOURCE_ID. Needs the az CLI signed in.
"""

from __future__ import annotations

import os
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


def subscribe(
    env: Mapping[str, str],
    run: Az = az,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Wait until rotation_check is listed on the app, then create (or update) the subscription."""
    group = require(env, "AZURE_RESOURCE_GROUP")
    topic = require(env, "EVENT_GRID_SYSTEM_TOPIC_NAME")
    function_id = f"{require(env, 'AZURE_FUNCTION_APP_RESOURCE_ID')}/functions/{FUNCTION_NAME}"

    deadline = clock() + WAIT_FOR_FUNCTION_S
    while run("resource", "show", "--ids", function_id).returncode != 0:
        if clock() > deadline:
            raise SystemExit(
                f"rotation-subscription: {FUNCTION_NAME} is not listed on the Function App after "
                f"{WAIT_FOR_FUNCTION_S} s; check the deployment, then run `azd hooks run postdeploy`"
            )
        print(f"rotation-subscription: waiting for {FUNCTION_NAME} to be indexed ...")
        sleep(POLL_S)

    done = run(
        "eventgrid", "system-topic", "event-subscription", "create",
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
