// Private networking (vnetEnabled=true): the broker reaches Key Vault and its host storage over
// private endpoints, and both turn public network access off.
//
//   snet-app               delegated to Microsoft.App/environments: the Function App's outbound
//                          traffic (virtualNetworkSubnetId on the site). Flex Consumption's VNet
//                          integration uses shared gateways, at most 27 addresses: a /27 is enough.
//   snet-private-endpoints one private endpoint each for the vault and the blob and table services
//                          the Functions host uses (keys, leases, the deployment package, the fleet
//                          token cache; diagnostic events). The host uses no queues or file shares on
//                          Flex Consumption.
//
// Each endpoint gets a private DNS zone linked to the VNet, so the usual names
// (kv-x.vault.azure.net, stx.blob.core.windows.net) resolve to private addresses inside it.
// Inbound to the Function App stays public and Entra-authenticated (docs/deploy.md explains how an
// ADF managed virtual network can reach it privately instead).
//
// Outbound to the internet (iLevel, Entra ID, Application Insights) is decided here, explicitly,
// never by the API version: from virtual-network API version 2025-07-01 on, a subnet that says
// nothing is private (defaultOutboundAccess false) and has no implicit outbound address. So:
//   natGatewayEnabled=false  snet-app keeps default outbound access, set on purpose (true), which is
//                            what every earlier deployment of this template had;
//   natGatewayEnabled=true   snet-app is private and a NAT gateway with one static public IP is its
//                            explicit outbound method: the broker's egress is that one address.
// snet-private-endpoints needs no outbound at all: private (false) in both cases.
// docs/deploy.md ("Outbound") cites the Microsoft documents this follows.
//
// Hand-written rather than AVM modules: these are the resources a security review reads first, and
// checkov can only check what it can read; it cannot open registry modules.
param vnetName string
param nsgName string
param privateEndpointPrefix string
param natGatewayName string
param publicIpName string
param location string
param tags object

@description('Address space of the VNet; pick a range that does not overlap networks you peer with.')
param addressPrefix string

@description('Subnet for the app\'s outbound traffic. Flex Consumption\'s VNet integration uses shared gateways with at most 27 addresses: a /27 is enough.')
param appSubnetPrefix string

@description('Subnet for the private endpoints (three addresses used).')
param privateEndpointSubnetPrefix string

@description('A NAT gateway with a static public IP as snet-app\'s outbound method (main.bicep natGatewayEnabled).')
param natGatewayEnabled bool

param keyVaultId string
param storageAccountId string

var appSubnetName = 'snet-app'
var privateEndpointSubnetName = 'snet-private-endpoints'

// One row per private endpoint: the target resource, its sub-resource (groupId) and the zone that
// resolves it. The vault zone has the same name in every public-cloud region.
var endpoints = [
  {
    key: 'vault'
    groupId: 'vault'
    target: keyVaultId
    zone: 'privatelink.vaultcore.azure.net'
  }
  {
    key: 'blob'
    groupId: 'blob'
    target: storageAccountId
    zone: 'privatelink.blob.${environment().suffixes.storage}'
  }
  {
    key: 'table'
    groupId: 'table'
    target: storageAccountId
    zone: 'privatelink.table.${environment().suffixes.storage}'
  }
]

// No custom rules: the defaults allow traffic inside the VNet and outbound, and deny inbound from
// the internet. Attached so that a rule a security team adds later has a place to go.
resource nsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: nsgName
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

// The static egress address (natGatewayEnabled). Standard SKU, static: NAT gateway accepts no other.
resource egressIp 'Microsoft.Network/publicIPAddresses@2024-05-01' = if (natGatewayEnabled) {
  name: publicIpName
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Regional'
  }
  properties: {
    publicIPAddressVersion: 'IPv4'
    publicIPAllocationMethod: 'Static'
    idleTimeoutInMinutes: 4
  }
}

resource natGateway 'Microsoft.Network/natGateways@2024-05-01' = if (natGatewayEnabled) {
  name: natGatewayName
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    idleTimeoutInMinutes: 4
    publicIpAddresses: [
      {
        id: egressIp.id
      }
    ]
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: appSubnetName
        properties: {
          addressPrefix: appSubnetPrefix
          networkSecurityGroup: {
            id: nsg.id
          }
          // Explicit either way (see the header): the API version never decides it.
          defaultOutboundAccess: !natGatewayEnabled
          natGateway: natGatewayEnabled ? {
            id: natGateway.id
          } : null
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: privateEndpointSubnetName
        properties: {
          addressPrefix: privateEndpointSubnetPrefix
          networkSecurityGroup: {
            id: nsg.id
          }
          defaultOutboundAccess: false
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
    ]
  }
}

resource zones 'Microsoft.Network/privateDnsZones@2020-06-01' = [
  for endpoint in endpoints: {
    name: endpoint.zone
    location: 'global'
    tags: tags
  }
]

resource zoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [
  for (endpoint, i) in endpoints: {
    parent: zones[i]
    name: vnet.name
    location: 'global'
    tags: tags
    properties: {
      registrationEnabled: false
      virtualNetwork: {
        id: vnet.id
      }
    }
  }
]

resource privateEndpoints 'Microsoft.Network/privateEndpoints@2024-05-01' = [
  for endpoint in endpoints: {
    name: '${privateEndpointPrefix}${endpoint.key}'
    location: location
    tags: tags
    properties: {
      subnet: {
        id: vnet.properties.subnets[1].id // snet-private-endpoints
      }
      privateLinkServiceConnections: [
        {
          name: endpoint.key
          properties: {
            privateLinkServiceId: endpoint.target
            groupIds: [
              endpoint.groupId
            ]
          }
        }
      ]
    }
  }
]

resource zoneGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = [
  for (endpoint, i) in endpoints: {
    parent: privateEndpoints[i]
    name: 'default'
    properties: {
      privateDnsZoneConfigs: [
        {
          name: endpoint.key
          properties: {
            privateDnsZoneId: zones[i].id
          }
        }
      ]
    }
  }
]

output appSubnetId string = vnet.properties.subnets[0].id // snet-app
output vnetName string = vnet.name
output egressIpAddress string = natGatewayEnabled ? egressIp.properties.ipAddress : ''
