// The broker: a Linux Function App on Flex Consumption, Python 3.11, user-assigned identity only.
param name string
param location string
param tags object
param planId string
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerName string
param applicationInsightsName string
param keyVaultUri string
param appIdUri string
param brokerApiClientId string
param ilevelTokenUrl string
param enableAppServiceAuth bool
param callerApplicationIds string

@description('Flex Consumption instance size; the broker is I/O-bound, the smallest size is enough.')
param instanceMemoryMB int = 2048

@description('Upper bound on instances; each one fetches its own iLevel token, so keep it small.')
param maximumInstanceCount int = 40

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
  KEY_VAULT_URL: keyVaultUri
  AZURE_CLIENT_ID: identityClientId
  BROKER_TENANT_ID: tenant().tenantId
  BROKER_AUDIENCE: audience
  BROKER_PROVIDERS: 'ilevel'
  BROKER_ILEVEL_TOKEN_URL: ilevelTokenUrl
  BROKER_ILEVEL_ALLOWED_ROLES: 'Token.Read.ilevel'
}
// --- app settings: end ---

var callerApps = empty(callerApplicationIds) ? [] : split(callerApplicationIds, ',')
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

module app 'br/public:avm/res/web/site:0.15.1' = {
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
    publicNetworkAccess: 'Enabled'
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
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
    appSettingsKeyValuePairs: appSettings
    authSettingV2Configuration: enableAppServiceAuth ? authSettings : {}
  }
}

output name string = app.outputs.name
output resourceId string = app.outputs.resourceId
output defaultHostName string = app.outputs.defaultHostname
