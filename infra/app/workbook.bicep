// The operators' workbook: what callers got, how fast, and what the broker asked of iLevel and
// Key Vault, over a time range they choose. Its JSON is workbook.json beside this file (every query
// in it is checked against broker/ by tests/infra/test_workbook_queries.py); docs/workbook.png is
// the same panels drawn from a local run (bench/workbook/).
param applicationInsightsName string
param location string
param tags object

@description('Title shown in the portal (Monitor → Workbooks, and the Application Insights resource\'s Workbooks).')
param displayName string = 'iLevel token broker'

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // A workbook's name must be a GUID; this one is stable per Application Insights resource.
  name: guid(applicationInsights.id, 'ilevel-token-broker-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: applicationInsights.id
    // fallbackResourceIds names the component, so the workbook opened outside its resource (Monitor →
    // Workbooks, a shared link) still queries it rather than asking which resource to use.
    serializedData: string(union(json(loadTextContent('./workbook.json')), { fallbackResourceIds: [ applicationInsights.id ] }))
  }
}

output workbookId string = workbook.id
