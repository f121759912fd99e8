// What tells the people who answer for the pipelines that the broker needs them: an action group,
// one log-search alert per failure the broker logs, the Key Vault near-expiry event, and an
// availability test. Every query reads the broker's real log lines and metric names (the access
// lines of the token route, `outcome=`, and of the proxy route, `status=`); tests/infra/
// test_alert_queries.py checks each name against broker/, and docs/operations.md says why each
// default threshold and window is what it is. Never compiled here: property names and enums were checked
// by hand against Microsoft's ARM schemas (Azure/azure-resource-manager-schemas) for these API versions.
param applicationInsightsName string
param location string
param tags object

@description('Name prefix of the alert rules, the action group and the availability test.')
param namePrefix string

@description('Comma-separated e-mail addresses the action group notifies (azd: BROKER_ALERT_EMAILS). Empty: the alerts exist but notify no one.')
param alertEmails string = ''

@description('The vault\'s Event Grid system topic; its SecretNearExpiry events become alerts.')
param keyVaultSystemTopicName string

@description('Host name of the Function App; the availability test requests https://<host>/api/health.')
param brokerHostName string

@description('How often every log-search alert runs. Five minutes is the shortest window Application Insights ingestion reliably fills.')
param evaluationFrequency string = 'PT5M'

@description('Window of the alerts that mean "act now" (rotation failed, Key Vault denied, fleet cache degraded): one evaluation.')
param urgentWindow string = 'PT5M'

@description('Window of the alerts that count (callers get errors, stale tokens, caller rejections).')
param countingWindow string = 'PT15M'

@description('Answers of 500 or more (or broker_misconfigured) in countingWindow before "Callers are getting errors" fires.')
param callerErrorThreshold int = 3

@description('Rejected caller tokens in countingWindow before "Caller rejections spike" fires.')
param callerRejectionThreshold int = 20

@description('Test locations of the availability test that must fail at once before "The app is down" fires.')
param availabilityFailedLocations int = 2

// Spaces and empty entries dropped: " a@x.com, b@x.com," is two receivers. (No lambdas: checkov's
// Bicep parser cannot read them, and a file it cannot read is a file it does not check.)
var spaceless = replace(replace(replace(alertEmails, ' ', ''), ',,', ','), ',,', ',')
var leading = startsWith(spaceless, ',') ? substring(spaceless, 1) : spaceless
var cleaned = endsWith(leading, ',') ? substring(leading, 0, length(leading) - 1) : leading
var emails = empty(cleaned) ? [] : split(cleaned, ',')

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: '${namePrefix}broker-alerts'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'brokeralert'
    enabled: true
    emailReceivers: [
      for (address, index) in emails: {
        name: 'email-${index}'
        emailAddress: address
        useCommonAlertSchema: true
      }
    ]
  }
}

// --- alert queries: begin ---
// Each rule's query, one per key. tests/infra/test_alert_queries.py checks every logger, message,
// field, metric and dimension against broker/, and the policy test reads the rules below.
var queries = {
  // broker.rotation: the Event Grid rotation check refused a new version; broker.source: a request found it refused.
  rotationFailed: '''
traces
| where tostring(customDimensions.logger_name) in ("broker.rotation", "broker.source")
| where message startswith "rotation FAILED"
'''
  // Token route: broker.errors has one line per answer of 500 or more. Proxy route: the access line's
  // status= (the broker's own 5xx and iLevel's, forwarded). Either route: a misconfigured app's outcome.
  callerErrors: '''
traces
| where tostring(customDimensions.logger_name) in ("broker.access", "broker.errors")
| extend status = toint(extract(@"status=([0-9]+)", 1, message)), outcome = extract(@"outcome=(\S+)", 1, message)
| where (tostring(customDimensions.logger_name) == "broker.errors" and message startswith "request ")
    or (tostring(customDimensions.logger_name) == "broker.access" and message startswith "proxy " and status >= 500)
    or outcome == "broker_misconfigured"
'''
  // The cache serves both routes, so its stale warning covers both; the source's warning is Key Vault
  // failing while the last pair read still works.
  tokenStale: '''
traces
| where tostring(customDimensions.logger_name) in ("broker.cache", "broker.source")
| where message startswith "serving a stale" or message has "read earlier"
'''
  // Every secret read, whichever route or the rotation check made it, counts by outcome.
  keyVaultDenied: '''
customMetrics
| where name == "broker.keyvault.reads"
| where tostring(customDimensions.outcome) == "key_vault_forbidden"
| summarize denied = sum(valueSum)
'''
  // Callers are authenticated before routing: one counter for the token and the proxy route.
  callerRejections: '''
customMetrics
| where name == "broker.caller_auth.failures"
| summarize rejections = sum(valueSum)
'''
  // One WARNING per state change, never per request (the fleet cache's contract).
  fleetDegraded: '''
traces
| where tostring(customDimensions.logger_name) == "broker.fleet"
| where message startswith "fleet cache degraded:"
'''
}
// --- alert queries: end ---

var logAlerts = [
  {
    key: 'rotationFailed'
    displayName: 'Rotation failed'
    description: 'The token endpoint refused a new secret version in Key Vault. Fix the secret before the old one is revoked (docs/operations.md, Rotating the iLevel credential).'
    severity: 1
    windowSize: urgentWindow
    threshold: 1
    measure: ''
  }
  {
    key: 'callerErrors'
    displayName: 'Callers are getting errors'
    description: 'Callers got answers of 500 or more, or broker_misconfigured, on the token or the proxy route: pipelines are failing or about to.'
    severity: 1
    windowSize: countingWindow
    threshold: callerErrorThreshold
    measure: ''
  }
  {
    key: 'tokenStale'
    displayName: 'Token served stale'
    description: 'iLevel or Key Vault is failing while the cached token or the last secrets read still cover callers; they stop covering at the token\'s expiry.'
    severity: 2
    windowSize: countingWindow
    threshold: 1
    measure: ''
  }
  {
    key: 'keyVaultDenied'
    displayName: 'Key Vault access denied'
    description: 'Key Vault refused the broker\'s identity: it lost Key Vault Secrets User, or the network blocks the vault.'
    severity: 1
    windowSize: urgentWindow
    threshold: 1
    measure: 'denied'
  }
  {
    key: 'callerRejections'
    displayName: 'Caller rejections spike'
    description: 'Many caller tokens were rejected: a misconfigured pipeline (wrong audience, no app role), or someone probing.'
    severity: 2
    windowSize: countingWindow
    threshold: callerRejectionThreshold
    measure: 'rejections'
  }
  {
    key: 'fleetDegraded'
    displayName: 'Fleet cache degraded'
    description: 'The fleet token cache on Blob Storage stopped working; each instance fetches its own tokens until it is restored.'
    severity: 2
    windowSize: urgentWindow
    threshold: 1
    measure: ''
  }
]

resource logAlertRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [
  for alert in logAlerts: {
    name: '${namePrefix}${alert.key}'
    location: location
    tags: tags
    properties: {
      displayName: alert.displayName
      description: alert.description
      severity: alert.severity
      enabled: true
      scopes: [
        applicationInsights.id
      ]
      evaluationFrequency: evaluationFrequency
      windowSize: alert.windowSize
      autoMitigate: true
      criteria: {
        allOf: [
          {
            query: queries[alert.key]
            timeAggregation: empty(alert.measure) ? 'Count' : 'Total'
            metricMeasureColumn: empty(alert.measure) ? null : alert.measure
            operator: 'GreaterThanOrEqual'
            threshold: alert.threshold
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      actions: {
        actionGroups: [
          actionGroup.id
        ]
      }
    }
  }
]

// Key Vault publishes SecretNearExpiry 30 days before a secret version's expiry date; Event Grid
// hands it to Azure Monitor as an alert with the action group (an Event Grid destination for Key
// Vault sources only). The system topic is Bicep's (keyvault.bicep), so this needs no hook.
resource keyVaultTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: keyVaultSystemTopicName
}

resource secretNearExpiry 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: keyVaultTopic
  name: 'secret-near-expiry-alert'
  properties: {
    destination: {
      endpointType: 'MonitorAlert'
      properties: {
        severity: 'Sev3'
        description: 'Secret near expiry: a secret the broker reads in Key Vault expires within 30 days. Rotate it (docs/operations.md) and set an expiry date on the new version.'
        actionGroups: [
          actionGroup.id
        ]
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.KeyVault.SecretNearExpiry'
        'Microsoft.KeyVault.SecretExpired'
      ]
    }
    // A MonitorAlert destination takes CloudEvents 1.0 only (the rotation_check subscription on the
    // same topic keeps the Event Grid schema; each subscription has its own).
    eventDeliverySchema: 'CloudEventSchemaV1_0'
  }
}

// A standard test: GET /api/health from five locations every five minutes. /api/health answers
// without a caller token, and 503 broker_misconfigured when the configuration is invalid.
resource healthTest 'Microsoft.Insights/webtests@2022-06-15' = {
  name: '${namePrefix}health'
  location: location
  tags: union(tags, {
    'hidden-link:${applicationInsights.id}': 'Resource'
  })
  kind: 'standard'
  properties: {
    SyntheticMonitorId: '${namePrefix}health'
    Name: 'Broker /api/health'
    Enabled: true
    Frequency: 300
    Timeout: 30
    Kind: 'standard'
    RetryEnabled: true
    Locations: [
      { Id: 'us-va-ash-azr' }
      { Id: 'emea-nl-ams-azr' }
      { Id: 'emea-gb-db3-azr' }
      { Id: 'apac-sg-sin-azr' }
      { Id: 'us-ca-sjc-azr' }
    ]
    Request: {
      RequestUrl: 'https://${brokerHostName}/api/health'
      HttpVerb: 'GET'
      ParseDependentRequests: false
    }
    ValidationRules: {
      ExpectedHttpStatusCode: 200
      SSLCheck: true
      SSLCertRemainingLifetimeCheck: 7
    }
  }
}

resource appDown 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}appDown'
  location: 'global'
  tags: tags
  properties: {
    description: 'The app is down: /api/health failed from ${availabilityFailedLocations} or more test locations at once.'
    severity: 1
    enabled: true
    scopes: [
      healthTest.id
      applicationInsights.id
    ]
    evaluationFrequency: 'PT1M'
    windowSize: 'PT5M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.WebtestLocationAvailabilityCriteria'
      webTestId: healthTest.id
      componentId: applicationInsights.id
      failedLocationCount: availabilityFailedLocations
    }
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}

output actionGroupId string = actionGroup.id
output alertRuleIds array = [for (alert, index) in logAlerts: logAlertRules[index].id]
