// Log Analytics + Application Insights, both with local (key-based) auth off: the broker's
// identity ingests with Entra ID (Monitoring Metrics Publisher, see rbac.bicep).
param logAnalyticsName string
param applicationInsightsName string
param location string
param tags object

@description('Days of logs kept; 30 is included in the Log Analytics price.')
param retentionInDays int = 30

// Hand-written: the AVM workspace version the Functions quickstarts pin (0.7.0) has no parameter
// for features.disableLocalAuth, and writing it here lets checkov see the setting.
resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      disableLocalAuth: true
    }
  }
}

module applicationInsights 'br/public:avm/res/insights/component:0.4.1' = {
  name: 'application-insights'
  params: {
    name: applicationInsightsName
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.id
    disableLocalAuth: true
  }
}

output logAnalyticsWorkspaceId string = logAnalytics.id
output applicationInsightsName string = applicationInsights.outputs.name
