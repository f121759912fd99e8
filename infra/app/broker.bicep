// The broker: a Linux Function App on Flex Consumption, Python 3.13, user-assigned identity only.
param name string
param location string
param tags object
param planId string
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerName string

@description('Blob container of the fleet token cache, in the same storage account (BROKER_FLEET_CACHE_URL).')
param fleetCacheContainerName string

@description('Key Vault secret holding the fleet cache key material (BROKER_FLEET_CACHE_KEY_SECRET).')
param fleetCacheKeySecretName string

param applicationInsightsName string
param keyVaultUri string
param appIdUri string
param brokerApiClientId string
param enableAppServiceAuth bool
param callerApplicationIds string

@description('Provider app settings from the preprovision hook: base64 of a JSON object. Empty: the fallback below.')
param providerSettings string

@description('Resource id of the subnet delegated to Microsoft.App/environments; empty: no VNet integration.')
param appSubnetId string

@description('Flex Consumption instance size in MB (512, 2048 or 4096; main.bicep says why 2048). Also BROKER_INSTANCE_MEMORY_MB, from which the broker sizes its proxy memory budget.')
param instanceMemoryMB int

@description('HTTP requests per instance before Flex Consumption scales out (main.bicep says why).')
param httpPerInstanceConcurrency int

@description('Upper bound on instances (Flex Consumption accepts 1 and more); each one fetches its own provider token and reads Key Vault unless the fleet cache serves it.')
param maximumInstanceCount int

@description('BROKER_PROXY_TIMEOUT_SECONDS, or empty for the broker\'s default.')
param proxyTimeoutSeconds string

@description('BROKER_PROXY_MAX_RESPONSE_MB, or empty for the broker\'s default.')
param proxyMaxResponseMb string

@description('BROKER_PROXY_SLOT_WAIT_SECONDS, or empty for the broker\'s default.')
param proxySlotWaitSeconds string

@description('BROKER_TOKEN_BUDGET_SECONDS, or empty for the broker\'s default.')
param tokenBudgetSeconds string

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

var audience = empty(brokerApiClientId) ? appIdUri : '${appIdUri},${brokerApiClientId}'

// --- app settings: begin ---
// Every setting the Function App gets, in one flat object. tests/infra/test_settings_crosscheck.py
// parses this block and checks it against broker/config.py; keep keys literal and one per line.
// Nothing secret belongs here: the iLevel credentials stay in Key Vault and the broker reads them itself.
var appSettings = {
  AzureWebJobsStorage__accountName: storageAccount.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // OpenTelemetry mode: the worker (azure-functions-runtime) exports the broker logger once, with the host's
  // operation id. Never PYTHON_ENABLE_OPENTELEMETRY alone (worker issue 1881: every async invocation fails);
  // tests/worker/test_deployed_settings.py runs the worker under this block (why: docs/operations.md).
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
  PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME: 'broker'
  // The default sampler keeps about 5 spans a second; parent-based keeps the host's sampling decision.
  OTEL_TRACES_SAMPLER: 'parentbased_always_on'
  KEY_VAULT_URL: keyVaultUri
  AZURE_CLIENT_ID: identityClientId
  BROKER_TENANT_ID: tenant().tenantId
  BROKER_AUDIENCE: audience
  BROKER_FLEET_CACHE_URL: '${storageAccount.properties.primaryEndpoints.blob}${fleetCacheContainerName}'
  BROKER_FLEET_CACHE_KEY_SECRET: fleetCacheKeySecretName
  BROKER_INSTANCE_MEMORY_MB: string(instanceMemoryMB)
}
// --- app settings: end ---

// Broker settings an operator changes through azd (main.parameters.json maps each from the azd
// variable of the same name). An empty value is written as an empty setting, which the broker reads
// as "not set" and answers with its default (broker/config.py strips and skips blank values).
// tests/infra/test_settings_through_azd.py traces each documented azd setting through here.
// --- settings through azd: begin ---
var operatorSettings = {
  BROKER_PROXY_TIMEOUT_SECONDS: trim(proxyTimeoutSeconds)
  BROKER_PROXY_MAX_RESPONSE_MB: trim(proxyMaxResponseMb)
  BROKER_PROXY_SLOT_WAIT_SECONDS: trim(proxySlotWaitSeconds)
  BROKER_TOKEN_BUDGET_SECONDS: trim(tokenBudgetSeconds)
}
// --- settings through azd: end ---

// Provider settings (BROKER_PROVIDERS, BROKER_<NAME>_TOKEN_URL, BROKER_<NAME>_ALLOWED_ROLES, ...) come
// from the azd environment through infra/hooks/entra_app.py, which also declares one app role per
// provider. base64 because azd pastes values into main.parameters.json as text, and JSON's quotes
// would break that file. The fallback, used when the hook has not run, must equal what the hook
// writes for an empty environment (tests/infra/test_settings_crosscheck.py checks it).
// --- provider settings fallback: begin ---
var fallbackProviderSettings = {
  BROKER_PROVIDERS: 'ilevel'
  BROKER_ILEVEL_TOKEN_URL: 'https://api.ilevelsolutions.com/v1/token'
  BROKER_ILEVEL_ALLOWED_ROLES: 'Token.Read.ilevel'
}
// --- provider settings fallback: end ---
var brokerProviderSettings = empty(providerSettings) ? fallbackProviderSettings : json(base64ToString(providerSettings))

// Spaces removed (client ids have none), empty items dropped: "a, b," is two client ids.
var callerApps = filter(split(replace(callerApplicationIds, ' ', ''), ','), id => !empty(id))
var audiences = empty(brokerApiClientId) ? [
  appIdUri
] : [
  appIdUri
  brokerApiClientId
]

// App Service Authentication: a second lock in front of the in-code validation, off by default
// (its support on Flex Consumption has changed over time; the broker never relies on it alone).
var authSettings = {
  platform: {
    enabled: true
  }
  globalValidation: {
    requireAuthentication: true
    unauthenticatedClientAction: 'Return401'
    excludedPaths: [
      '/api/health'
      '/runtime/webhooks/EventGrid'
    ]
  }
  identityProviders: {
    azureActiveDirectory: {
      enabled: true
      registration: {
        // Managed-identity tokens for an app with the default accessTokenAcceptedVersion are v1.
        openIdIssuer: 'https://sts.windows.net/${tenant().tenantId}/'
        clientId: brokerApiClientId
      }
      validation: {
        allowedAudiences: audiences
        defaultAuthorizationPolicy: {
          allowedApplications: callerApps
        }
      }
    }
  }
  login: {
    tokenStore: {
      enabled: false
    }
  }
}

var authSettingsOff = {
  platform: {
    enabled: false
  }
}

// The whole set of app settings, written as one Microsoft.Web/sites/config 'appsettings' that
// replaces what is live: a setting removed from the azd environment (a provider, a MODE) is gone after
// the next provision. AVM web/site before 0.16.0 merged the live settings into the new ones, so a
// removed setting stayed forever; 0.16.0 added retainCurrentAppSettings, false here.
var allAppSettings = union(appSettings, brokerProviderSettings, operatorSettings)

module app 'br/public:avm/res/web/site:0.16.0' = {
  name: 'broker-site'
  params: {
    kind: 'functionapp,linux'
    name: name
    location: location
    tags: union(tags, {
      'azd-service-name': 'broker'
    })
    serverFarmResourceId: planId
    httpsOnly: true
    clientAffinityEnabled: false
    // Inbound stays public: callers (ADF, Logic Apps, APIM) authenticate with Entra ID tokens, and
    // the broker validates each one. Outbound goes through the VNet when appSubnetId is set.
    publicNetworkAccess: 'Enabled'
    virtualNetworkSubnetId: empty(appSubnetId) ? null : appSubnetId
    managedIdentities: {
      userAssignedResourceIds: [
        identityId
      ]
    }
    keyVaultAccessIdentityResourceId: identityId
    basicPublishingCredentialsPolicies: [
      {
        name: 'ftp'
        allow: false
      }
      {
        name: 'scm'
        allow: false
      }
    ]
    siteConfig: {
      alwaysOn: false
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageAccount.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.13'
      }
    }
    configs: [
      {
        name: 'appsettings'
        retainCurrentAppSettings: false
        properties: allAppSettings
      }
      {
        // Off is an explicit platform.enabled false, so that "off" also switches off an app where it was on.
        name: 'authsettingsV2'
        properties: enableAppServiceAuth ? authSettings : authSettingsOff
      }
    ]
  }
}

output name string = app.outputs.name
output resourceId string = app.outputs.resourceId
output defaultHostName string = app.outputs.defaultHostname
