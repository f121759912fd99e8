// iLevel token broker: everything `azd provision` creates.
//
// Parsed and policy-checked with checkov in this repo (make infra-check), but never
// compiled or deployed here. Run `az bicep build --file infra/main.bicep` and
// `azd provision --preview` before the first deployment (docs/deploy.md).
//
// What Bicep cannot do is in azd hooks (azure.yaml):
//   infra/hooks/entra_app.py             - app registration, app roles, role grants to callers
//   infra/hooks/rotation_subscription.py - Event Grid subscription to the rotation_check function
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; seeds every resource name.')
param environmentName string

@minLength(1)
@description('Region for all resources. It must offer Flex Consumption (az functionapp list-flexconsumption-locations).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the person running azd. Gets Key Vault Secrets Officer so they can store the iLevel credentials. Empty: no grant.')
param principalId string = ''

@description('Principal type of principalId: User for a person, ServicePrincipal for a CI identity.')
@allowed([
  'User'
  'ServicePrincipal'
])
param principalType string = 'User'

@description('App ID URI of the broker\'s Entra application (the aud callers request), set by the preprovision hook. Empty: api://<tenantId>/ilevel-token-broker-<environmentName>, the hook\'s default, one of Entra\'s secure identifier-URI formats.')
param brokerAppIdUri string = ''

@description('Client (application) id of the broker\'s Entra application, set by the preprovision hook. Added to BROKER_AUDIENCE when known.')
param brokerApiClientId string = ''

@description('The provider app settings (BROKER_PROVIDERS and each BROKER_<NAME>_*), base64 of a JSON object, written by the preprovision hook from the azd environment. Empty: iLevel alone, with its public token endpoint.')
param brokerProviderSettings string = ''

@description('Switch on App Service Authentication (authsettingsV2) as a second lock in front of the in-code token validation. false switches it off, also on an app where it was on.')
param enableAppServiceAuth bool = false

@description('Comma-separated client (application) ids of callers that App Service Authentication lets through (allowedApplications). Used only when enableAppServiceAuth is true.')
param callerApplicationIds string = ''

@description('Private networking: a VNet for the app\'s outbound traffic, private endpoints for Key Vault and storage, and public network access off on both. false keeps a public layout for trying the broker out; never for production credentials.')
param vnetEnabled bool = true

@description('Address space of the VNet (vnetEnabled); choose one that does not overlap networks you peer with.')
param vnetAddressPrefix string = '10.0.0.0/16'

@description('Subnet inside vnetAddressPrefix for the app\'s outbound traffic. Flex Consumption\'s VNet integration uses shared gateways with at most 27 addresses: a /27 is enough.')
param appSubnetPrefix string = '10.0.1.0/24'

@description('Subnet inside vnetAddressPrefix for the private endpoints.')
param privateEndpointSubnetPrefix string = '10.0.2.0/24'

@description('Comma-separated public IPv4 addresses of operators who put secrets into the vault (vnetEnabled). Each gets a firewall rule on the vault only; storage never opens to them. A non-empty list turns the vault\'s public network access on, which a Deny policy on Key Vault public access refuses (docs/deploy.md). Empty: no public access at all.')
param operatorIpAddresses string = ''

@description('A NAT gateway with one static public IP on the app subnet (vnetEnabled): the broker\'s outbound traffic to iLevel and other providers leaves from that one address (output BROKER_EGRESS_IP), which providers can allow-list. Costs an hourly fee plus data processed (docs/deploy.md). false: the app\'s outbound traffic uses the platform\'s shared addresses.')
param natGatewayEnabled bool = false

// Flex Consumption's instance sizes (MB). The broker is I/O-bound; 2048 leaves the proxy room for
// concurrent streamed responses, and the broker sizes its proxy budget from this value
// (BROKER_INSTANCE_MEMORY_MB). 512 is the smallest and cheapest.
@allowed([
  512
  2048
  4096
])
@description('Memory of one Flex Consumption instance, in MB; also the app setting BROKER_INSTANCE_MEMORY_MB.')
param instanceMemoryMB int = 2048

// Broker settings an operator may change through azd (docs/deploy.md, "App settings through azd").
// Empty: the setting is left out and the broker uses its own default.
@description('BROKER_PROXY_TIMEOUT_SECONDS: seconds a whole proxied request may take (1-160, docs/reference.md). Empty: the broker\'s default.')
param proxyTimeoutSeconds string = ''

@description('BROKER_PROXY_MAX_RESPONSE_MB: largest proxied response, in MiB (1-1024, docs/reference.md). Empty: the broker\'s default.')
param proxyMaxResponseMb string = ''

@description('BROKER_PROXY_SLOT_WAIT_SECONDS: seconds a proxied request waits for an upstream slot before 503 proxy_busy (0-30, docs/reference.md). Empty: the broker\'s default.')
param proxySlotWaitSeconds string = ''

@description('BROKER_TOKEN_BUDGET_SECONDS: seconds a whole token request may take, retries included (1-50, docs/reference.md). Empty: the broker\'s default.')
param tokenBudgetSeconds string = ''

// The broker is async and I/O-bound: one instance answers hundreds of concurrent cached-token
// requests, and in proxy mode holds many slow upstream calls open at once. Flex Consumption's Python
// default is 1 concurrent request per instance, which starts a new instance (with its own token
// fetch and Key Vault reads) for every extra concurrent caller. docs/operations.md has the trade-off.
@minValue(1)
@maxValue(1000)
@description('HTTP requests one instance handles at once before Flex Consumption adds an instance.')
param httpPerInstanceConcurrency int = 100

// Each instance fetches its own provider token and reads Key Vault on its own (unless the fleet
// cache serves it), so this also caps upstream token requests and Key Vault reads during a burst.
// Flex Consumption's lowest maximum instance count is 1 ("the lowest maximum instance count value is
// 1", Microsoft's event-driven scaling page, learn.microsoft.com/azure/azure-functions/event-driven-scaling,
// as quoted in issue 22 on 2026-12-06; it used to say 40). A low cap limits upstream token requests and
// Key Vault reads; with 100 per instance the default of 40 serves 4,000 concurrent requests.
@minValue(1)
@maxValue(1000)
@description('Upper bound on Flex Consumption instances.')
param maximumInstanceCount int = 40

@description('Comma-separated e-mail addresses the alerts notify (docs/operations.md, Alerts). Empty: the alerts are deployed but notify no one.')
param alertEmails string = ''

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var appIdUri = empty(brokerAppIdUri) ? 'api://${tenant().tenantId}/ilevel-token-broker-${environmentName}' : brokerAppIdUri
// Spaces removed (addresses have none), empty items dropped: "a, b," is two addresses; ARM refuses
// an empty IP rule.
var operatorIps = filter(split(replace(operatorIpAddresses, ' ', ''), ','), address => !empty(address))
// With the network on, storage is reached only through its private endpoints, whatever the operator
// addresses: operators never need storage, and a Deny policy on storage public access stays satisfied.
var storagePublicNetworkAccess = vnetEnabled ? 'Disabled' : 'Enabled'
var functionAppName = '${abbrs.webSitesFunctions}broker-${resourceToken}'
var deploymentContainerName = 'app-package-broker'
// The fleet token cache (issue 14): one container, the broker's identity its only writer.
var fleetCacheContainerName = 'broker-tokens'
var fleetCacheKeySecretName = 'broker-fleet-cache-key'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

// The one identity the broker uses for Key Vault, storage and Application Insights.
module identity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}broker-${resourceToken}'
    location: location
    tags: tags
  }
}

module plan 'br/public:avm/res/web/serverfarm:0.1.1' = {
  name: 'plan'
  scope: rg
  params: {
    name: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    sku: {
      name: 'FC1'
      tier: 'FlexConsumption'
    }
    reserved: true
  }
}

module storage 'br/public:avm/res/storage/storage-account:0.8.3' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    // The module's defaults are the opposite of both.
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    supportsHttpsTrafficOnly: true
    minimumTlsVersion: 'TLS1_2'
    dnsEndpointType: 'Standard'
    publicNetworkAccess: storagePublicNetworkAccess
    networkAcls: {
      defaultAction: vnetEnabled ? 'Deny' : 'Allow'
      bypass: vnetEnabled ? 'None' : 'AzureServices'
      ipRules: []
    }
    blobServices: {
      containers: [
        {
          name: deploymentContainerName
        }
        {
          name: fleetCacheContainerName
        }
      ]
    }
  }
}

module monitoring './app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
  }
}

module vault './app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    systemTopicName: '${abbrs.eventGridSystemTopics}kv-${resourceToken}'
    location: location
    tags: tags
    privateNetwork: vnetEnabled
    operatorIpAddresses: operatorIps
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    fleetCacheKeySecretName: fleetCacheKeySecretName
  }
}

module network './app/network.bicep' = if (vnetEnabled) {
  name: 'network'
  scope: rg
  params: {
    vnetName: '${abbrs.networkVirtualNetworks}${resourceToken}'
    nsgName: '${abbrs.networkNetworkSecurityGroups}${resourceToken}'
    privateEndpointPrefix: '${abbrs.networkPrivateEndpoints}${resourceToken}-'
    natGatewayName: '${abbrs.networkNatGateways}${resourceToken}'
    publicIpName: '${abbrs.networkPublicIPAddresses}nat-${resourceToken}'
    natGatewayEnabled: natGatewayEnabled
    location: location
    tags: tags
    addressPrefix: vnetAddressPrefix
    appSubnetPrefix: appSubnetPrefix
    privateEndpointSubnetPrefix: privateEndpointSubnetPrefix
    keyVaultId: vault.outputs.id
    storageAccountId: storage.outputs.resourceId
  }
}

module broker './app/broker.bicep' = {
  name: 'broker'
  scope: rg
  params: {
    name: functionAppName
    location: location
    tags: tags
    planId: plan.outputs.resourceId
    identityId: identity.outputs.resourceId
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    fleetCacheContainerName: fleetCacheContainerName
    fleetCacheKeySecretName: vault.outputs.fleetCacheKeySecretName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultUri: vault.outputs.uri
    appIdUri: appIdUri
    brokerApiClientId: brokerApiClientId
    providerSettings: brokerProviderSettings
    appSubnetId: vnetEnabled ? network.outputs.appSubnetId : ''
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    proxyTimeoutSeconds: proxyTimeoutSeconds
    proxyMaxResponseMb: proxyMaxResponseMb
    proxySlotWaitSeconds: proxySlotWaitSeconds
    tokenBudgetSeconds: tokenBudgetSeconds
    enableAppServiceAuth: enableAppServiceAuth
    callerApplicationIds: callerApplicationIds
  }
}

module rbac './app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    identityPrincipalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    fleetCacheContainerName: fleetCacheContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultName: vault.outputs.name
    deployerPrincipalId: principalId
    deployerPrincipalType: principalType
  }
}

// Alerts, their action group and the availability test (docs/operations.md).
module alerts './app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    namePrefix: '${abbrs.insightsComponents}${resourceToken}-'
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    location: location
    tags: tags
    alertEmails: alertEmails
    keyVaultSystemTopicName: vault.outputs.systemTopicName
    brokerHostName: broker.outputs.defaultHostName
  }
}

// The operators' workbook (docs/operations.md).
module workbook './app/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    location: location
    tags: tags
  }
}

// azd stores these in .azure/<env>/.env; the hooks and docs read them from there.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = broker.outputs.name
output AZURE_FUNCTION_APP_RESOURCE_ID string = broker.outputs.resourceId
output BROKER_URL string = 'https://${broker.outputs.defaultHostName}'
// The bare host name (no scheme, no path), for ADF linked services that take a host.
output BROKER_HOST string = broker.outputs.defaultHostName
output BROKER_APP_ID_URI string = appIdUri
output BROKER_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output KEY_VAULT_NAME string = vault.outputs.name
output KEY_VAULT_URL string = vault.outputs.uri
output EVENT_GRID_SYSTEM_TOPIC_NAME string = vault.outputs.systemTopicName
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output VNET_NAME string = vnetEnabled ? network.outputs.vnetName : ''
// The one address the broker's outbound traffic leaves from (natGatewayEnabled); empty without it.
output BROKER_EGRESS_IP string = vnetEnabled && natGatewayEnabled ? network.outputs.egressIpAddress : ''
