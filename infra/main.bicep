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

@description('App ID URI of the broker\'s Entra application (the aud callers request). Empty: api://ilevel-token-broker-<environmentName>, the same default the preprovision hook uses.')
param brokerAppIdUri string = ''

@description('Client (application) id of the broker\'s Entra application, set by the preprovision hook. Added to BROKER_AUDIENCE when known.')
param brokerApiClientId string = ''

@description('iLevel OAuth2 token endpoint.')
param ilevelTokenUrl string = 'https://api.ilevelsolutions.com/v1/token'

@description('Switch on App Service Authentication (authsettingsV2) as a second lock in front of the in-code token validation.')
param enableAppServiceAuth bool = false

@description('Comma-separated client (application) ids of callers that App Service Authentication lets through (allowedApplications). Used only when enableAppServiceAuth is true.')
param callerApplicationIds string = ''

@description('Key Vault public network access. Flex Consumption without VNet integration reaches the vault over its public endpoint, so Disabled needs a private endpoint you add yourself.')
@allowed([
  'Enabled'
  'Disabled'
])
param keyVaultPublicNetworkAccess string = 'Enabled'

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var appIdUri = empty(brokerAppIdUri) ? 'api://ilevel-token-broker-${environmentName}' : brokerAppIdUri
var functionAppName = '${abbrs.webSitesFunctions}broker-${resourceToken}'
var deploymentContainerName = 'app-package-broker'

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
    minimumTlsVersion: 'TLS1_2'
    dnsEndpointType: 'Standard'
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    blobServices: {
      containers: [
        {
          name: deploymentContainerName
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
    publicNetworkAccess: keyVaultPublicNetworkAccess
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
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
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultUri: vault.outputs.uri
    appIdUri: appIdUri
    brokerApiClientId: brokerApiClientId
    ilevelTokenUrl: ilevelTokenUrl
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
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultName: vault.outputs.name
    deployerPrincipalId: principalId
    deployerPrincipalType: principalType
  }
}

// azd stores these in .azure/<env>/.env; the hooks and docs read them from there.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = broker.outputs.name
output AZURE_FUNCTION_APP_RESOURCE_ID string = broker.outputs.resourceId
output BROKER_URL string = 'https://${broker.outputs.defaultHostName}'
output BROKER_APP_ID_URI string = appIdUri
output BROKER_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output KEY_VAULT_NAME string = vault.outputs.name
output KEY_VAULT_URL string = vault.outputs.uri
output EVENT_GRID_SYSTEM_TOPIC_NAME string = vault.outputs.systemTopicName
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
