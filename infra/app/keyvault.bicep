// The vault that holds the iLevel client id and secret and the fleet cache key, and the Event Grid
// system topic that publishes its secret events (the subscription is created after deploy, see
// infra/hooks/rotation_subscription.py).
param name string
param systemTopicName string
param location string
param tags object

@description('True when the broker reaches the vault over a private endpoint (vnetEnabled): the firewall then denies everything else.')
param privateNetwork bool

@description('Public IPv4 addresses or CIDR ranges of operators who put secrets in. With privateNetwork, empty means public network access is off altogether.')
param operatorIpAddresses array

param logAnalyticsWorkspaceId string

@description('Name of the secret that holds the fleet token cache\'s key material (BROKER_FLEET_CACHE_KEY_SECRET).')
param fleetCacheKeySecretName string

// The fleet cache key, made here so no one ever types it and no data-plane call from the deployer's
// machine is needed (the vault is private): four GUIDs, 4 x 122 random bits, well over the 256 bits
// the broker requires before it derives the AES key with HKDF. newGuid() is allowed only as a
// parameter default, and main.bicep never passes this parameter, so the default applies on every
// deployment: each `azd provision` writes a new secret version. That is safe: every cache blob names
// the key version that sealed it and the broker reads that version, so blobs sealed before keep
// decrypting, and new writes use the new version. It appears in no output.
@secure()
@description('Key material of the fleet token cache. Leave it to its default.')
param fleetCacheKey string = '${newGuid()}${newGuid()}${newGuid()}${newGuid()}'

// Public network access is off when the network is private and no operator address is listed. With
// operator addresses it is on, but the firewall admits those addresses only (Key Vault ignores IP
// rules while public network access is Disabled). An Azure Policy that denies Key Vault public
// network access other than Disabled refuses exactly that case: in such tenants, leave the list
// empty and reach the vault from inside the VNet (docs/deploy.md). Without the network
// (vnetEnabled=false) Flex Consumption reaches the vault from shared outbound addresses, so the
// firewall must allow all.
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
    // Unused in RBAC mode, but the REST API expects the property (an empty list) on create.
    accessPolicies: []
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

// The fleet token cache's key (issue 14). ARM writes it through the Key Vault resource provider,
// which the vault's firewall does not govern, so a private vault needs no opening for it.
resource fleetCacheKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41: no expiry on purpose: an expired key would silently turn the fleet cache off; each azd provision writes a new version instead (see the parameter above)
  parent: vault
  name: fleetCacheKeySecretName
  properties: {
    value: fleetCacheKey
    contentType: 'text/plain; fleet cache key material, HKDF input'
    attributes: {
      enabled: true
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
output fleetCacheKeySecretName string = fleetCacheKeySecret.name
