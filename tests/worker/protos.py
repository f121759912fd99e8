"""A test double of the Functions RPC protobuf messages, only those azure_functions_runtime reads and builds.

``azure_functions_runtime`` (Microsoft's library worker for Python 3.13+) takes the protobuf module as
``request.properties["protos"]``: the host's gRPC ``proxy_worker`` passes its generated
``FunctionRpc_pb2`` there, and neither the proxy worker nor the generated classes are on PyPI. This module
stands in for that module, with the message types the pinned runtime (1.3.0) names (``grep 'protos\\.'`` in
its source) and the ones the tests build requests from, and the protobuf behaviour the runtime relies on:

- keyword construction; ``None`` for a field means "not set", as in protobuf's Python constructors;
- every unset field reads as its default: ``""``, ``0``, ``False``, an empty map or list, or an empty
  message (never ``None``), so ``request.trace_context.trace_parent`` is ``""`` when the host sends none;
- ``oneof`` groups: setting one member clears the others and ``WhichOneof(group)`` names the one set
  (``TypedData.data``, ``ParameterBinding.rpc_data``, ``StreamingMessage.content``);
- enum values are plain ints, as protobuf's Python enums are (``StatusResult.Success`` is 1).

Field names, numbers of enum values and oneof groups follow the host's ``FunctionRpc.proto``
(azure-functions-language-worker-protobuf). What it does not cover: the gRPC transport and the
``proxy_worker`` that runs it (its threads, its event loop, its message ordering), the .NET host that
builds the real messages, protobuf serialization (field numbers, wire types, unknown fields, size
limits), shared-memory data transfer, the HTTP-streams (HttpUri) channel, durable and deferred
bindings, and every message type the runtime does not touch.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, ClassVar

Default = Callable[[], Any]


class Message:
    """A protobuf-like message: declared fields with defaults, oneof groups, WhichOneof."""

    FIELDS: ClassVar[dict[str, Default]] = {}
    ONEOFS: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, **fields: Any) -> None:
        self._set: dict[str, Any] = {}
        for name, value in fields.items():
            if value is not None:
                setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        declared = type(self).FIELDS
        if name not in declared:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        if name not in self._set:
            # Maps, lists and messages are mutable in protobuf: reading one creates it in place.
            value = declared[name]()
            if isinstance(value, dict | list | Message):
                self._set[name] = value
            return value
        return self._set[name]

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_set":
            object.__setattr__(self, name, value)
            return
        if name not in type(self).FIELDS:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        for members in type(self).ONEOFS.values():
            if name in members:
                for other in members:
                    self._set.pop(other, None)
        if isinstance(value, dict):
            value = dict(value)
        elif isinstance(value, list | tuple):
            value = list(value)
        self._set[name] = value

    def WhichOneof(self, group: str) -> str | None:  # noqa: N802 - protobuf's name
        members = type(self).ONEOFS[group]
        return next((name for name in members if name in self._set), None)

    def HasField(self, name: str) -> bool:  # noqa: N802 - protobuf's name
        return name in self._set

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._set == other._set  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._set.items())})"


def message(kind: type[Message]) -> Default:
    return kind


def _str() -> str:
    return ""


def _int() -> int:
    return 0


def _float() -> float:
    return 0.0


def _bool() -> bool:
    return False


def _bytes() -> bytes:
    return b""


def _map() -> dict[str, Any]:
    return {}


def _list() -> list[Any]:
    return []


def _timedelta() -> datetime.timedelta:
    return datetime.timedelta(0)


# --- scalars and wrappers ---------------------------------------------------------------------------
class Timestamp(Message):
    FIELDS: ClassVar[dict[str, Default]] = {"seconds": _int, "nanos": _int}


class NullableString(Message):
    FIELDS: ClassVar[dict[str, Default]] = {"value": _str}
    ONEOFS: ClassVar[dict[str, tuple[str, ...]]] = {"string": ("value",)}


class NullableDouble(Message):
    FIELDS: ClassVar[dict[str, Default]] = {"value": _float}
    ONEOFS: ClassVar[dict[str, tuple[str, ...]]] = {"double": ("value",)}


class NullableBool(Message):
    FIELDS: ClassVar[dict[str, Default]] = {"value": _bool}
    ONEOFS: ClassVar[dict[str, tuple[str, ...]]] = {"bool": ("value",)}


class NullableTimestamp(Message):
    FIELDS: ClassVar[dict[str, Default]] = {"value": message(Timestamp)}
    ONEOFS: ClassVar[dict[str, tuple[str, ...]]] = {"timestamp": ("value",)}


class RpcException(Message):
    FIELDS: ClassVar[dict[str, Default]] = {"source": _str, "stack_trace": _str, "message": _str}


class StatusResult(Message):
    Failure = 0
    Success = 1
    Cancelled = 2
    FIELDS: ClassVar[dict[str, Default]] = {
        "status": _int,
        "result": _str,
        "exception": message(RpcException),
        "logs": _list,
    }


# --- data -------------------------------------------------------------------------------------------
class RpcHttpCookie(Message):
    class SameSite:
        Lax = 1
        Strict = 2
        ExplicitNone = 3

    FIELDS: ClassVar[dict[str, Default]] = {
        "name": _str,
        "value": _str,
        "domain": message(NullableString),
        "path": message(NullableString),
        "expires": message(NullableTimestamp),
        "secure": message(NullableBool),
        "http_only": message(NullableBool),
        "same_site": _int,
        "max_age": message(NullableDouble),
    }


# ``None`` is a keyword, so protobuf exposes this enum value through getattr only.
setattr(RpcHttpCookie.SameSite, "None", 0)  # noqa: B010


class TypedData(Message):
    FIELDS: ClassVar[dict[str, Default]] = {}  # filled below: RpcHttp refers back to TypedData
    ONEOFS: ClassVar[dict[str, tuple[str, ...]]] = {
        "data": (
            "string",
            "json",
            "bytes",
            "stream",
            "http",
            "int",
            "double",
            "collection_bytes",
            "collection_string",
            "collection_double",
            "collection_sint64",
            "model_binding_data",
            "collection_model_binding_data",
        )
    }


class RpcHttp(Message):
    FIELDS: ClassVar[dict[str, Default]] = {
        "method": _str,
        "url": _str,
        "headers": _map,
        "body": message(TypedData),
        "params": _map,
        "status_code": _str,
        "query": _map,
        "enable_content_negotiation": _bool,
        "rawBody": message(TypedData),
        "identities": _list,
        "cookies": _list,
        "nullable_headers": _map,
        "nullable_params": _map,
        "nullable_query": _map,
    }


TypedData.FIELDS = {
    "string": _str,
    "json": _str,
    "bytes": _bytes,
    "stream": _bytes,
    "http": message(RpcHttp),
    "int": _int,
    "double": _float,
    "collection_bytes": _list,
    "collection_string": _list,
    "collection_double": _list,
    "collection_sint64": _list,
    "model_binding_data": _map,
    "collection_model_binding_data": _list,
}


class ParameterBinding(Message):
    FIELDS: ClassVar[dict[str, Default]] = {"name": _str, "data": message(TypedData), "rpc_shared_memory": _map}
    ONEOFS: ClassVar[dict[str, tuple[str, ...]]] = {"rpc_data": ("data", "rpc_shared_memory")}


# --- metadata ---------------------------------------------------------------------------------------
class BindingInfo(Message):
    # Direction: ``in`` is a keyword, hence getattr only (below).
    out = 1
    inout = 2
    # DataType
    undefined = 0
    string = 1
    binary = 2
    stream = 3
    FIELDS: ClassVar[dict[str, Default]] = {"type": _str, "direction": _int, "data_type": _int, "properties": _map}


setattr(BindingInfo, "in", 0)  # noqa: B010


class RpcRetryOptions(Message):
    FIELDS: ClassVar[dict[str, Default]] = {
        "max_retry_count": _int,
        "delay_interval": _timedelta,
        "minimum_interval": _timedelta,
        "maximum_interval": _timedelta,
        "retry_strategy": _str,
    }


class RpcFunctionMetadata(Message):
    FIELDS: ClassVar[dict[str, Default]] = {
        "name": _str,
        "directory": _str,
        "script_file": _str,
        "entry_point": _str,
        "bindings": _map,
        "is_proxy": _bool,
        "status": message(StatusResult),
        "language": _str,
        "raw_bindings": _list,
        "function_id": _str,
        "managed_dependency_enabled": _bool,
        "retry_options": message(RpcRetryOptions),
        "properties": _map,
    }


class WorkerMetadata(Message):
    FIELDS: ClassVar[dict[str, Default]] = {
        "runtime_name": _str,
        "runtime_version": _str,
        "worker_version": _str,
        "worker_bitness": _str,
        "custom_properties": _map,
    }


# --- requests (what the host sends) -------------------------------------------------------------------
class WorkerInitRequest(Message):
    FIELDS: ClassVar[dict[str, Default]] = {
        "host_version": _str,
        "capabilities": _map,
        "log_categories": _map,
        "worker_directory": _str,
        "function_app_directory": _str,
    }


class FunctionsMetadataRequest(Message):
    FIELDS: ClassVar[dict[str, Default]] = {"function_app_directory": _str}


class FunctionLoadRequest(Message):
    FIELDS: ClassVar[dict[str, Default]] = {
        "function_id": _str,
        "metadata": message(RpcFunctionMetadata),
        "managed_dependency_enabled": _bool,
    }


class RpcTraceContext(Message):
    FIELDS: ClassVar[dict[str, Default]] = {"trace_parent": _str, "trace_state": _str, "attributes": _map}


class RetryContext(Message):
    FIELDS: ClassVar[dict[str, Default]] = {
        "retry_count": _int,
        "max_retry_count": _int,
        "exception": message(RpcException),
    }


class InvocationRequest(Message):
    FIELDS: ClassVar[dict[str, Default]] = {
        "invocation_id": _str,
        "function_id": _str,
        "input_data": _list,
        "trigger_metadata": _map,
        "trace_context": message(RpcTraceContext),
        "retry_context": message(RetryContext),
    }


class FunctionEnvironmentReloadRequest(Message):
    FIELDS: ClassVar[dict[str, Default]] = {
        "environment_variables": _map,
        "function_app_directory": _str,
    }


class StreamingMessage(Message):
    FIELDS: ClassVar[dict[str, Default]] = {
        "request_id": _str,
        "worker_init_request": message(WorkerInitRequest),
        "functions_metadata_request": message(FunctionsMetadataRequest),
        "function_load_request": message(FunctionLoadRequest),
        "invocation_request": message(InvocationRequest),
        "function_environment_reload_request": message(FunctionEnvironmentReloadRequest),
    }
    ONEOFS: ClassVar[dict[str, tuple[str, ...]]] = {
        "content": (
            "worker_init_request",
            "functions_metadata_request",
            "function_load_request",
            "invocation_request",
            "function_environment_reload_request",
        )
    }


# --- responses (what the runtime builds) -----------------------------------------------------------------
class WorkerInitResponse(Message):
    FIELDS: ClassVar[dict[str, Default]] = {
        "worker_version": _str,
        "capabilities": _map,
        "result": message(StatusResult),
        "worker_metadata": message(WorkerMetadata),
    }


class FunctionMetadataResponse(Message):
    FIELDS: ClassVar[dict[str, Default]] = {
        "function_metadata_results": _list,
        "result": message(StatusResult),
        "use_default_metadata_indexing": _bool,
    }


class FunctionLoadResponse(Message):
    FIELDS: ClassVar[dict[str, Default]] = {
        "function_id": _str,
        "result": message(StatusResult),
        "is_dependency_downloaded": _bool,
    }


class InvocationResponse(Message):
    FIELDS: ClassVar[dict[str, Default]] = {
        "invocation_id": _str,
        "output_data": _list,
        "return_value": message(TypedData),
        "result": message(StatusResult),
    }


class FunctionEnvironmentReloadResponse(Message):
    FIELDS: ClassVar[dict[str, Default]] = {
        "worker_metadata": message(WorkerMetadata),
        "capabilities": _map,
        "result": message(StatusResult),
    }
