// The vault that holds the iLevel client id and secret, and the Event Grid system topic that
// publishes its secret events (the subscription is created after deploy, see infra/hooks/rotation_subscription.py).
param name string
param systemTopicName string
param location string
param tags object

@description('True when the broker reaches the vault over a private endpoint (vnetEnabled): the firewall then denies everything else.')
param privateNetwork bool

@description('Public IPv4 addresses or CIDR ranges of operators who put secrets in. With privateNetwork, empty means public network access is off altogether.')
param operatorIpAddresses array

param logAnalyticsWorkspaceId string

// Public network access is off when the network is private and no operator address is listed. With
// operator addresses it is on, but the firewall admits those addresses only (Key Vault ignores IP
// rules while public network access is Disabled). Without the network (vnetEnabled=false) Flex
// Consumption reaches the vault from shared outbound addresses, so the firewall must allow all.
var publicNetworkAccess = privateNetwork && empty(operatorIpAddresses) ? 'Disabled' : 'Enabled'

// Hand-written rather than AVM: this is the resource whose settings matter most (RBAC mode, soft
// delete, purge protection, network access), and checkov can only check what it can read; it cannot open registry modules.
resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: defaultAction is the expression privateNetwork ? 'Deny' : 'Allow', which checkov cannot evaluate and fails; it is Deny with vnetEnabled (the default), and tests/infra/test_bicep_policy.py asserts the expression
  // checkov:skip=CKV_AZURE_189: publicNetworkAccess comes from a variable, on which this check crashes (it expects a string); it is Disabled with vnetEnabled and no operator address, and tests/infra/test_bicep_policy.py asserts the expression
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
      // Nothing the broker needs is a trusted-service bypass: Event Grid events and diagnostic logs
      // are not data-plane access.
      bypass: privateNetwork ? 'None' : 'AzureServices'
      defaultAction: privateNetwork ? 'Deny' : 'Allow'
      ipRules: [
        for address in operatorIpAddresses: {
          value: address
        }
      ]
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
output id string = vault.id
output uri string = vault.properties.vaultUri
output systemTopicName string = systemTopic.name
