"""The message double behaves as protobuf's Python messages do where the worker relies on it."""

from __future__ import annotations

import pytest

from tests.worker import protos


def test_an_unset_field_reads_as_its_default_and_a_message_field_is_never_none() -> None:
    """Strings "", numbers 0, maps and lists empty, messages empty: the worker reads trace_context unguarded."""
    request = protos.InvocationRequest(invocation_id="i")
    assert request.function_id == "" and request.input_data == [] and request.trigger_metadata == {}
    assert request.trace_context.trace_parent == "" and request.retry_context.retry_count == 0


def test_none_in_a_constructor_means_not_set() -> None:
    """protos.RpcHttp(cookies=None) and InvocationResponse(return_value=None), as the worker builds them."""
    assert protos.RpcHttp(cookies=None).cookies == []
    assert protos.InvocationResponse(return_value=None).return_value.WhichOneof("data") is None


def test_one_member_of_a_oneof_at_a_time_and_which_one_is_named() -> None:
    """Setting a member clears the others; WhichOneof names the one set, or None."""
    data = protos.TypedData(string="a")
    assert data.WhichOneof("data") == "string"
    data.bytes = b"b"
    assert data.WhichOneof("data") == "bytes" and data.string == ""
    assert protos.ParameterBinding(data=data).WhichOneof("rpc_data") == "data"


def test_an_undeclared_field_is_an_error_as_in_protobuf() -> None:
    """A misspelt field fails loudly instead of reading as a default."""
    with pytest.raises(AttributeError):
        protos.TypedData(strng="a")
    with pytest.raises(AttributeError):
        _ = protos.TypedData().TypedData


def test_enum_values_are_the_protos_ints() -> None:
    """FunctionRpc.proto: StatusResult Failure 0 / Success 1; BindingInfo in 0 / out 1 / inout 2."""
    assert (protos.StatusResult.Failure, protos.StatusResult.Success) == (0, 1)
    assert (getattr(protos.BindingInfo, "in"), protos.BindingInfo.out, protos.BindingInfo.inout) == (0, 1, 2)
    assert getattr(protos.RpcHttpCookie.SameSite, "None") == 0
