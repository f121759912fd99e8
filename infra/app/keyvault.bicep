// The vault that holds the iLevel client id and secret, and the Event Grid system topic that
// publishes its secret events (the subscription is created after deploy, see infra/hooks/rotation_subscription.py).
param name string
param systemTopicName string
param location string
param tags object

@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string

param logAnalyticsWorkspaceId string

// Hand-written rather than AVM: this is the resource whose settings matter most (RBAC mode, soft
// delete, purge protection), and checkov can only check what it can read; it cannot open registry modules.
resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: Flex Consumption without VNet integration reaches the vault from shared outbound IPs that are not a trusted service, so the firewall default must be Allow; access is by Entra RBAC only, and publicNetworkAccess can be set to Disabled when you add a private endpoint
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

// Who read or changed which secret, queryable next to the broker's own logs (docs/operations.md).
resource vaultDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

// Hand-written: one resource with two properties; a module would add nothing.
resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: systemTopicName
  location: location
  tags: tags
  properties: {
    source: vault.id
    topicType: 'Microsoft.KeyVault.vaults'
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
output systemTopicName string = systemTopic.name
