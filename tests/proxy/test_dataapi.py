"""The stand-in data API trusts only the stand-in token server's tokens, and only while they are valid."""

from __future__ import annotations

import base64

import httpx
import jwt

from broker.standin.dataapi import DataApi
from tests.conftest import Stack, sensitive


def issued(stack: Stack) -> str:
    basic = base64.b64encode(f"{stack.client_id}:{stack.client_secret}".encode()).decode()
    answer = httpx.post(
        stack.token_url, data={"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {basic}"}
    )
    assert answer.status_code == 200
    return sensitive(answer.json()["access_token"])


def status(data_api: DataApi, token: str) -> int:
    return httpx.get(data_api.base_url + "entities/assets", headers={"Authorization": f"Bearer {token}"}).status_code


def test_a_token_the_token_server_issued_is_accepted_until_revoked(stack: Stack, data_api: DataApi) -> None:
    """200 with an issued token; 401 once it is revoked; 401 without one."""
    token = issued(stack)
    assert status(data_api, token) == 200
    data_api.revoke(token)
    assert status(data_api, token) == 401
    assert httpx.get(data_api.base_url + "entities/assets").status_code == 401


def test_expired_and_foreign_tokens_get_401(stack: Stack, data_api: DataApi) -> None:
    """A token past its exp, and one signed by anyone else, are rejected."""
    stack.tokens.expires_in = -60
    assert status(data_api, issued(stack)) == 401
    claims = jwt.decode(issued(stack), options={"verify_signature": False})
    forged = sensitive(jwt.encode({**claims, "exp": 2**31}, "not-the-token-servers-key-0123456789", algorithm="HS256"))
    assert status(data_api, forged) == 401
