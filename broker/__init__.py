"""iLevel token broker: Key Vault secrets → cached OAuth2 client-credentials token → authenticated HTTP endpoint."""

__version__ = "1.0.0"
