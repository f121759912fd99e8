"""STAND-IN for local development and tests; never used in production.

Real local servers that speak the real protocols of the systems around the broker:
an OAuth2 client-credentials token endpoint (``oauth``), Azure Key Vault's secrets
REST API (``keyvault``), the App Service managed identity endpoint (``identity``),
Entra ID's OpenID metadata and signing keys (``entra``) and an iLevel-shaped data API for
proxy mode (``dataapi``). ``serve`` runs any of them on loopback in a background thread;
``tls`` makes a throwaway test PKI.
"""
