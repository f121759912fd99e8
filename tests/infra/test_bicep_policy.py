"""Rules checkov cannot enforce here, read from the Bicep source.

checkov does not open registry modules, so it never sees the inputs of an AVM call (storage, the
Function App, Application Insights), and it cannot evaluate a conditional expression. These tests
pin the security-relevant inputs of every module call and every conditional that decides network
access. A new AVM module call fails test_every_module_call_has_a_policy until it gets one here.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bicep_settings import ROOT, object_block, top_level_entries  # noqa: E402

INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
BROKER = INFRA / "app" / "broker.bicep"
KEYVAULT = INFRA / "app" / "keyvault.bicep"
NETWORK = INFRA / "app" / "network.bicep"
MONITORING = INFRA / "app" / "monitoring.bicep"
RBAC = INFRA / "app" / "rbac.bicep"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
MODULE_REF = re.compile(r"^module\s+(\w+)\s+'(br/public:[^']+)'", re.MULTILINE)
PINNED = re.compile(r"^br/public:avm/(res|ptn|utl)/[a-z0-9-]+/[a-z0-9-]+(/[a-z0-9-]+)*:\d+\.\d+\.\d+$")
ROLE_ASSIGNMENT = re.compile(r"^resource\s+(\w+)\s+'Microsoft\.Authorization/roleAssignments@", re.MULTILINE)
PARAM = re.compile(r"^param\s+(\w+)\s", re.MULTILINE)


def bicep_files() -> list[Path]:
    files = sorted(INFRA.rglob("*.bicep"))
    assert files, "no Bicep files under infra/"
    return files


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def block(source: str | list[str], opener: str) -> list[str]:
    return object_block(source if isinstance(source, str) else "\n".join(source), opener)


def within(source: str | list[str], *openers: str) -> str:
    """The text inside nested blocks, e.g. within(main, "module storage ", "params: {")."""
    for opener in openers:
        source = block(source, opener)
    return source if isinstance(source, str) else "\n".join(source)


def entries(lines: list[str]) -> dict[str, str]:
    return dict(top_level_entries(lines))


def module_params(path: Path, symbol: str) -> dict[str, str]:
    return entries(block(block(text(path), f"module {symbol} "), "params: {"))


def nested(path: Path, symbol: str, *openers: str) -> dict[str, str]:
    """Top-level entries of an object nested in a module's params, e.g. siteConfig."""
    lines = block(block(text(path), f"module {symbol} "), "params: {")
    for opener in openers:
        lines = block(lines, f"{opener}: {{")
    return entries(lines)


def resource_properties(path: Path, symbol: str) -> dict[str, str]:
    return entries(block(block(text(path), f"resource {symbol} "), "properties: {"))


def variable(path: Path, name: str) -> str:
    match = re.search(rf"^var {name} = (.+)$", text(path), re.MULTILINE)
    assert match, f"{path.name} has no one-line var {name}"
    return match[1].strip()


def array_objects(lines: list[str]) -> list[dict[str, str]]:
    """The top-level entries of each object in an array body (the lines between [ and ])."""
    objects: list[list[str]] = []
    depth = 0
    for line in lines:
        if depth == 0 and line.strip() == "{":
            objects.append([])
        elif depth >= 1 and not (depth == 1 and line.strip() == "}"):
            objects[-1].append(line)
        depth += line.count("{") + line.count("[") - line.count("}") - line.count("]")
    return [entries(body) for body in objects]


def site_configs() -> dict[str, dict[str, str]]:
    """The site module's configs[] entries by name, e.g. {'appsettings': {...}, 'authsettingsV2': {...}}."""
    lines = block(block(block(text(BROKER), "module app "), "params: {"), "configs: [")
    return {config["name"].strip("'"): config for config in array_objects(lines)}


def subnet(name: str) -> dict[str, str]:
    """Top-level properties of one subnet of the VNet in network.bicep."""
    subnets = block(block(block(text(NETWORK), "resource vnet "), "properties: {"), "subnets: [")
    for entry in array_objects(subnets):
        if entry["name"] == f"{name}Name":
            properties = "\n".join(subnets)
            start = properties.index(f"name: {name}Name")
            return entries(block(properties[start:], "properties: {"))
    raise AssertionError(f"no subnet named by {name}Name")


def param_line(path: Path, name: str) -> tuple[list[str], str]:
    """(decorator lines above it, the param line) of one parameter."""
    lines = text(path).splitlines()
    index = next(i for i, line in enumerate(lines) if re.match(rf"param {name}\s", line))
    decorators = []
    for line in reversed(lines[:index]):
        if not line.startswith(("@", "  ", "]", "}", ")")):
            break
        decorators.insert(0, line)
    return decorators, lines[index]


# --- Policies for each AVM module the infra calls: module path -> check of one call's params ---


def storage_policy(params: dict[str, str]) -> None:
    assert params["allowSharedKeyAccess"] == "false"
    assert params["allowBlobPublicAccess"] == "false"
    assert params["allowCrossTenantReplication"] == "false"
    assert params["defaultToOAuthAuthentication"] == "true"
    assert params["supportsHttpsTrafficOnly"] == "true"
    assert params["minimumTlsVersion"] == "'TLS1_2'"
    assert params["publicNetworkAccess"] == "storagePublicNetworkAccess"
    # Operators never need storage: with the network on it is Disabled whatever the operator addresses.
    assert variable(MAIN, "storagePublicNetworkAccess") == "vnetEnabled ? 'Disabled' : 'Enabled'"
    acls = nested(MAIN, "storage", "networkAcls")
    assert acls["defaultAction"] == "vnetEnabled ? 'Deny' : 'Allow'"
    assert acls["bypass"] == "vnetEnabled ? 'None' : 'AzureServices'"
    assert acls["ipRules"] == "[]", "no operator address ever reaches storage"
    containers = within(text(MAIN), "module storage ", "params: {", "blobServices: {", "containers: [")
    assert re.findall(r"name: (\w+)", containers) == ["deploymentContainerName", "fleetCacheContainerName"]
    assert variable(MAIN, "fleetCacheContainerName") == "'broker-tokens'"


def site_policy(params: dict[str, str]) -> None:
    assert params["kind"] == "'functionapp,linux'"
    assert params["httpsOnly"] == "true"
    assert params["publicNetworkAccess"] == "'Enabled'", "inbound is public by design; docs/deploy.md says so"
    assert params["virtualNetworkSubnetId"] == "empty(appSubnetId) ? null : appSubnetId"
    site_config = nested(BROKER, "app", "siteConfig")
    assert site_config["minTlsVersion"] == "'1.2'"
    assert site_config["scmMinTlsVersion"] == "'1.2'"
    assert site_config["ftpsState"] == "'Disabled'"
    identities = nested(BROKER, "app", "managedIdentities")
    assert set(identities) == {"userAssignedResourceIds"}, "user-assigned identity only, no system-assigned"
    call = "\n".join(block(text(BROKER), "module app "))
    policies = dict(re.findall(r"name: '(\w+)'\s*\n\s*allow: (\w+)", call))
    assert policies == {"ftp": "false", "scm": "false"}, "FTP and SCM basic publishing credentials must be off"
    deployment = nested(BROKER, "app", "functionAppConfig", "deployment", "storage", "authentication")
    assert deployment["type"] == "'UserAssignedIdentity'"
    http = nested(BROKER, "app", "functionAppConfig", "scaleAndConcurrency", "triggers", "http")
    assert http["perInstanceConcurrency"] == "httpPerInstanceConcurrency"
    configs = site_configs()
    assert set(configs) == {"appsettings", "authsettingsV2"}
    # Replace, never merge: a setting removed from the azd environment is gone after the next provision.
    assert configs["appsettings"]["retainCurrentAppSettings"] == "false"
    assert configs["appsettings"]["properties"] == "allAppSettings"
    assert "appSettingsKeyValuePairs" not in params
    assert configs["authsettingsV2"]["properties"] == "enableAppServiceAuth ? authSettings : authSettingsOff"
    assert entries(block(block(text(BROKER), "var authSettingsOff = {"), "platform: {")) == {"enabled": "false"}
    scale = nested(BROKER, "app", "functionAppConfig", "scaleAndConcurrency")
    assert scale["maximumInstanceCount"] == "maximumInstanceCount"
    assert scale["instanceMemoryMB"] == "instanceMemoryMB"


def insights_policy(params: dict[str, str]) -> None:
    assert params["disableLocalAuth"] == "true"


def identity_policy(params: dict[str, str]) -> None:
    assert set(params) <= {"name", "location", "tags"}, "the identity gets no federated credentials or roles here"


def plan_policy(params: dict[str, str]) -> None:
    assert entries(block(block(block(text(MAIN), "module plan "), "params: {"), "sku: {"))["name"] == "'FC1'"
    assert params["reserved"] == "true", "Linux"


POLICIES: dict[str, Callable[[dict[str, str]], None]] = {
    "avm/res/storage/storage-account": storage_policy,
    "avm/res/web/site": site_policy,
    "avm/res/insights/component": insights_policy,
    "avm/res/managed-identity/user-assigned-identity": identity_policy,
    "avm/res/web/serverfarm": plan_policy,
}


def module_calls() -> list[tuple[Path, str, str]]:
    """(file, symbol, module path without version) for every registry module call."""
    calls = []
    for path in bicep_files():
        for symbol, ref in MODULE_REF.findall(text(path)):
            calls.append((path, symbol, ref.removeprefix("br/public:").rsplit(":", 1)[0]))
    assert calls, "expected at least one Azure Verified Module"
    return calls


def test_every_registry_module_is_an_avm_module_pinned_to_an_exact_version() -> None:
    """Each br/public reference is avm/... at an exact x.y.z version, never a floating tag."""
    refs = [ref for path in bicep_files() for _, ref in MODULE_REF.findall(text(path))]
    loose = [ref for ref in refs if not PINNED.fullmatch(ref)]
    assert not loose, f"not pinned to an exact AVM version: {loose}"


def test_every_module_call_has_a_policy_and_meets_it() -> None:
    """Each AVM call's security inputs (network access, TLS, shared keys, HTTPS, publishing credentials, identity)."""
    for path, symbol, module in module_calls():
        assert module in POLICIES, f"{path.name}: module {symbol} ({module}) has no policy in this test; add one"
        POLICIES[module](module_params(path, symbol))


def test_monitoring_turns_local_auth_off() -> None:
    """The hand-written Log Analytics workspace accepts Entra ID ingestion only."""
    workspace = block(text(MONITORING), "resource logAnalytics ")
    assert entries(block(workspace, "features: {"))["disableLocalAuth"] == "true"


def test_key_vault_is_rbac_recoverable_and_private_with_the_network_on() -> None:
    """RBAC mode, soft delete, purge protection; public access off and firewall Deny when the network is on."""
    props = resource_properties(KEYVAULT, "vault")
    assert props["enableRbacAuthorization"] == "true"
    assert props["enableSoftDelete"] == "true"
    assert props["enablePurgeProtection"] == "true"
    assert props["publicNetworkAccess"] == "publicNetworkAccess"
    assert props["accessPolicies"] == "[]", "the REST API expects the property even in RBAC mode"
    access = variable(KEYVAULT, "publicNetworkAccess")
    assert access == "privateNetwork && empty(operatorIpAddresses) ? 'Disabled' : 'Enabled'"
    acls = entries(block(block(block(text(KEYVAULT), "resource vault "), "properties: {"), "networkAcls: {"))
    assert acls["defaultAction"] == "privateNetwork ? 'Deny' : 'Allow'"
    assert acls["bypass"] == "privateNetwork ? 'None' : 'AzureServices'"
    assert module_params(MAIN, "vault")["privateNetwork"] == "vnetEnabled"


def test_private_networking_is_on_by_default_and_wired_through() -> None:
    """vnetEnabled defaults to true, creates the network, and gives the app its delegated subnet."""
    main = text(MAIN)
    assert "param vnetEnabled bool = true" in main
    assert re.search(r"^module network '\./app/network\.bicep' = if \(vnetEnabled\) \{", main, re.MULTILINE)
    assert module_params(MAIN, "broker")["appSubnetId"] == "vnetEnabled ? network.outputs.appSubnetId : ''"


def test_network_has_a_delegated_app_subnet_and_private_endpoints_for_vault_blob_and_table() -> None:
    """The app subnet is delegated to Microsoft.App/environments; vault, blob and table get endpoints and zones."""
    network = text(NETWORK)
    subnets = block(block(block(network, "resource vnet "), "properties: {"), "subnets: [")
    joined = "\n".join(subnets)
    assert joined.count("networkSecurityGroup: {") == 2, "both subnets carry the NSG"
    assert "serviceName: 'Microsoft.App/environments'" in joined
    groups = dict(re.findall(r"key: '(\w+)'\s*\n\s*groupId: '(\w+)'", network))
    assert groups == {"vault": "vault", "blob": "blob", "table": "table"}
    zones = re.findall(r"zone: '([^']+)'", network)
    assert zones == [
        "privatelink.vaultcore.azure.net",
        "privatelink.blob.${environment().suffixes.storage}",
        "privatelink.table.${environment().suffixes.storage}",
    ]
    assert module_params(MAIN, "network")["keyVaultId"] == "vault.outputs.id"
    assert module_params(MAIN, "network")["storageAccountId"] == "storage.outputs.resourceId"


def test_every_role_assignment_is_idempotent_and_typed() -> None:
    """Role assignments are named with guid(...), set principalType, and name their role GUID in a comment."""
    path = INFRA / "app" / "rbac.bicep"
    source = text(path)
    symbols = ROLE_ASSIGNMENT.findall(source)
    assert symbols
    for symbol in symbols:
        body = entries(block(source, f"resource {symbol} "))
        assert body["name"].startswith("guid("), f"{symbol} is not named with guid(...)"
        assert "principalType" in resource_properties(path, symbol), f"{symbol} lacks principalType"
    for guid in re.findall(r"'([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})'", source):
        line = next(line for line in source.splitlines() if guid in line)
        assert "//" in line, f"role {guid} has no comment naming it"


def test_app_service_authentication_is_off_unless_asked_for() -> None:
    """authsettingsV2 is behind a bool parameter that defaults to false, and false sends an explicit off."""
    assert "param enableAppServiceAuth bool = false" in text(MAIN)
    assert site_configs()["authsettingsV2"]["properties"].endswith(": authSettingsOff")


def test_every_main_parameter_is_settable_from_the_azd_environment() -> None:
    """main.parameters.json maps each main.bicep parameter to an azd variable, and nothing else."""
    declared = set(PARAM.findall(text(MAIN)))
    mapped = json.loads(text(INFRA / "main.parameters.json"))["parameters"]
    assert set(mapped) == declared
    for name, entry in mapped.items():
        assert re.fullmatch(r"\$\{[A-Z_]+(=[^}]*)?\}", entry["value"]), f"{name} is not an azd variable"


def test_parameter_file_defaults_match_the_bicep_defaults() -> None:
    """A default in main.parameters.json (${VAR=default}) is the same as the Bicep parameter's default."""
    main = text(MAIN)
    mapped = json.loads(text(INFRA / "main.parameters.json"))["parameters"]
    for name, entry in mapped.items():
        default = re.fullmatch(r"\$\{[A-Z_]+=([^}]*)\}", entry["value"])
        bicep = re.search(rf"^param {name} \w+ = (.+)$", main, re.MULTILINE)
        if default and bicep:
            assert bicep[1].strip("'") == default[1], f"{name}: {default[1]!r} in the file, {bicep[1]} in Bicep"


def test_every_module_call_uses_only_parameters_of_the_pinned_version() -> None:
    """Each AVM call passes only parameters its pinned version declares, and every required one.

    tests/infra/avm_parameters.json lists them, read from each module's source at its release tag;
    a changed pin without an updated list fails here.
    """
    known = json.loads(text(Path(__file__).parent / "avm_parameters.json"))["modules"]
    for path in bicep_files():
        for symbol, ref in MODULE_REF.findall(text(path)):
            pinned = ref.removeprefix("br/public:")
            assert pinned in known, f"{path.name}: {pinned} is not in avm_parameters.json; add its parameters"
            passed = set(module_params(path, symbol))
            unknown = passed - set(known[pinned]["parameters"])
            missing = set(known[pinned]["required"]) - passed
            assert not unknown, f"{path.name}: module {symbol} passes {sorted(unknown)}, unknown to {pinned}"
            assert not missing, f"{path.name}: module {symbol} lacks required {sorted(missing)} of {pinned}"


# --- issue 16 ---


def test_vault_opens_only_for_operator_addresses_and_the_docs_say_a_deny_policy_forbids_it() -> None:
    """Operator IPs reach the vault alone; deploy.md names the Deny policy that refuses a non-Disabled vault."""
    assert module_params(MAIN, "vault")["operatorIpAddresses"] == "operatorIps"
    assert "operatorIps" not in "\n".join(block(text(MAIN), "module storage ")), "operator IPs never reach storage"
    rules = within(text(KEYVAULT), "resource vault ", "properties: {", "networkAcls: {", "ipRules: [")
    assert "for address in operatorIpAddresses" in rules
    doc = text(DEPLOY_DOC)
    assert "Azure Key Vault should disable public network access" in doc
    section = doc.split("### How operators reach the vault", 1)[1].split("\n### ", 1)[0]
    assert "Deny" in section and "BROKER_OPERATOR_IP_ADDRESSES" in section


def test_list_parameters_drop_spaces_and_empty_items() -> None:
    """ "a, b," is two items: operator IPs and caller application ids are split without spaces or empties."""
    ips = "filter(split(replace(operatorIpAddresses, ' ', ''), ','), address => !empty(address))"
    apps = "filter(split(replace(callerApplicationIds, ' ', ''), ','), id => !empty(id))"
    assert variable(MAIN, "operatorIps") == ips
    assert variable(BROKER, "callerApps") == apps


def test_maximum_instance_count_goes_down_to_flexs_floor_of_one() -> None:
    """Flex Consumption's lowest maximum instance count is 1 (its event-driven scaling page; it was 40): the
    parameter takes 1, so an operator can cap upstream token calls low; the default stays 40."""
    decorators, line = param_line(MAIN, "maximumInstanceCount")
    (low,) = [int(d[len("@minValue(") : -1]) for d in decorators if d.startswith("@minValue(")]
    assert low == 1
    assert int(line.rsplit("=", 1)[1]) == 40
    mapped = json.loads(text(INFRA / "main.parameters.json"))["parameters"]["maximumInstanceCount"]["value"]
    assert int(mapped.rsplit("=", 1)[1].rstrip("}")) == 40
    for doc in ("deploy.md", "operations.md"):
        assert "below 40" not in text(ROOT / "docs" / doc), f"docs/{doc} still says Flex rejects a maximum below 40"


def test_instance_memory_is_a_flex_size_and_reaches_the_broker() -> None:
    """instanceMemoryMB is one of Flex's sizes and the same number becomes BROKER_INSTANCE_MEMORY_MB."""
    decorators, line = param_line(MAIN, "instanceMemoryMB")
    allowed = [int(d.strip()) for d in decorators if d.strip().isdigit()]
    assert allowed == [512, 2048, 4096]
    assert module_params(MAIN, "broker")["instanceMemoryMB"] == "instanceMemoryMB"
    settings = entries(block(text(BROKER), "var appSettings = {"))
    assert settings["BROKER_INSTANCE_MEMORY_MB"] == "string(instanceMemoryMB)"


def test_app_subnet_outbound_is_explicit_and_the_nat_gateway_is_its_method_when_enabled() -> None:
    """No API version decides outbound: snet-app says it, with a NAT gateway when natGatewayEnabled."""
    app = subnet("appSubnet")
    assert app["defaultOutboundAccess"] == "!natGatewayEnabled"
    assert app["natGateway"] == "natGatewayEnabled ? {"
    nat_ref = entries(block(within(text(NETWORK), "resource vnet ", "subnets: ["), "natGateway: natGatewayEnabled ? {"))
    assert nat_ref == {"id": "natGateway.id"}
    assert subnet("privateEndpointSubnet")["defaultOutboundAccess"] == "false"
    network = text(NETWORK)
    for symbol, kind in (("natGateway", "natGateways"), ("egressIp", "publicIPAddresses")):
        declaration = rf"^resource {symbol} 'Microsoft.Network/{kind}@[\d-]+' = if \(natGatewayEnabled\) \{{"
        assert re.search(declaration, network, re.M), f"{symbol} exists only with natGatewayEnabled"
    ip = entries(block(block(network, "resource egressIp "), "properties: {"))
    assert ip["publicIPAllocationMethod"] == "'Static'"
    assert "id: egressIp.id" in "\n".join(block(block(network, "resource natGateway "), "publicIpAddresses: ["))
    assert module_params(MAIN, "network")["natGatewayEnabled"] == "natGatewayEnabled"
    assert "param natGatewayEnabled bool = false" in text(MAIN)
    mapped = json.loads(text(INFRA / "main.parameters.json"))["parameters"]
    assert mapped["natGatewayEnabled"]["value"] == "${BROKER_STATIC_EGRESS=false}"
    output = re.search(r"^output BROKER_EGRESS_IP string = (.+)$", text(MAIN), re.M)
    assert output and output[1] == "vnetEnabled && natGatewayEnabled ? network.outputs.egressIpAddress : ''"


def test_broker_host_is_output_bare() -> None:
    """BROKER_HOST is the default host name with no scheme, for ADF's host parameters."""
    output = re.search(r"^output BROKER_HOST string = (.+)$", text(MAIN), re.M)
    assert output and output[1] == "broker.outputs.defaultHostName"


# --- fleet cache (issue 14) ---


def test_fleet_cache_role_is_blob_data_contributor_on_its_container_only() -> None:
    """The broker's identity gets Storage Blob Data Contributor scoped to broker-tokens, not the account."""
    body = entries(block(text(RBAC), "resource identityFleetCacheContributor "))
    assert body["scope"] == "fleetCacheContainer"
    props = resource_properties(RBAC, "identityFleetCacheContributor")
    assert props["principalId"] == "identityPrincipalId"
    assert props["roleDefinitionId"].endswith("roles.storageBlobDataContributor)")
    assert "storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'" in text(RBAC)
    container = entries(block(text(RBAC), "resource fleetCacheContainer "))
    assert container == {"parent": "blobService", "name": "fleetCacheContainerName"}
    assert module_params(MAIN, "rbac")["fleetCacheContainerName"] == "fleetCacheContainerName"


def test_fleet_cache_url_is_the_container_and_shared_keys_stay_off() -> None:
    """BROKER_FLEET_CACHE_URL is the blob endpoint plus broker-tokens; no key, no connection string in Azure."""
    settings = entries(block(text(BROKER), "var appSettings = {"))
    url = "'${storageAccount.properties.primaryEndpoints.blob}${fleetCacheContainerName}'"
    assert settings["BROKER_FLEET_CACHE_URL"] == url
    assert settings["BROKER_FLEET_CACHE_KEY_SECRET"] == "fleetCacheKeySecretName"
    assert "BROKER_FLEET_CACHE_CONNECTION_STRING" not in settings
    assert module_params(MAIN, "storage")["allowSharedKeyAccess"] == "false"


def test_fleet_cache_key_is_generated_secret_and_never_output() -> None:
    """The key secret's value is a @secure() parameter defaulting to >= 3 newGuid()s, never passed, never output."""
    decorators, line = param_line(KEYVAULT, "fleetCacheKey")
    assert "@secure()" in decorators
    default = line.split(" = ", 1)[1].strip("'")
    calls = re.findall(r"\$\{newGuid\(\)\}", default)
    assert len(calls) >= 3 and "".join(calls) == default, "the default is newGuid() values and nothing else"
    assert resource_properties(KEYVAULT, "fleetCacheKeySecret")["value"] == "fleetCacheKey"
    assert entries(block(text(KEYVAULT), "resource fleetCacheKeySecret "))["name"] == "fleetCacheKeySecretName"
    assert variable(MAIN, "fleetCacheKeySecretName") == "'broker-fleet-cache-key'"
    assert "fleetCacheKey" not in module_params(MAIN, "vault"), "main never passes it, so each deployment draws anew"
    for path in bicep_files():
        for output in re.findall(r"^output .+$", text(path), re.M):
            assert not re.search(r"\bfleetCacheKey\b", output), f"{path.name}: {output}"


def test_site_configs_pass_only_keys_their_config_type_declares() -> None:
    """Each configs[] entry of the site module uses keys of its type at the pinned version (module source)."""
    known = json.loads(text(Path(__file__).parent / "avm_parameters.json"))["modules"]
    pinned = re.search(r"^module app '(br/public:[^']+)'", text(BROKER), re.M)
    assert pinned
    types = known[pinned[1].removeprefix("br/public:")]["config_types"]
    for name, config in site_configs().items():
        assert name in types, f"configs entry {name!r} is not a config type this repo recorded"
        unknown = set(config) - set(types[name])
        assert not unknown, f"configs entry {name!r} passes {sorted(unknown)}, unknown to its type"


def test_the_nat_gateway_docs_size_the_subnet_clean_up_after_turning_off_and_name_the_pinned_api() -> None:
    """docs/deploy.md's Outbound section: /27 is enough (Flex's shared gateways, at most 27 addresses); turning
    BROKER_STATIC_EGRESS off leaves the gateway and its IP, deleted gateway first, by the names main.bicep gives;
    turning it on for an existing VNet names the virtual-network API version network.bicep really pins."""
    deploy = text(ROOT / "docs" / "deploy.md")
    outbound = deploy[deploy.index("### Outbound: private subnets, NAT and the egress IP") :]
    outbound = outbound[: outbound.index("\n### ", 10)]
    assert "at most 27 addresses" in outbound and "a /27 is enough" in outbound
    assert "one address per instance" not in deploy + text(ROOT / "docs" / "operations.md") + text(NETWORK)
    abbrs = json.loads(text(INFRA / "abbreviations.json"))
    main = text(MAIN)
    assert "natGatewayName: '${abbrs.networkNatGateways}${resourceToken}'" in main
    assert "publicIpName: '${abbrs.networkPublicIPAddresses}nat-${resourceToken}'" in main
    gateway, address = f"{abbrs['networkNatGateways']}<token>", f"{abbrs['networkPublicIPAddresses']}nat-<token>"
    assert "leaves the NAT gateway itself" in outbound
    for shell in ("sh", "powershell"):
        (block,) = [b for b in re.findall(rf"```{shell}\n(.*?)```", outbound, re.S) if "nat gateway delete" in b]
        deletes = [line.strip() for line in block.splitlines() if " delete " in line]
        assert [d.split(" --")[0] for d in deletes] == ["az network nat gateway delete", "az network public-ip delete"]
        assert deletes[0].endswith(f"--name {gateway}") and deletes[1].endswith(f"--name {address}")
    (pinned,) = set(re.findall(r"'Microsoft\.Network/virtualNetworks@([\d-]+)'", text(NETWORK)))
    existing = outbound[outbound.index("Turning it on for an existing deployment") :]
    assert f"(`{pinned}`" in existing and "Subnets should be private" in existing
