"""Standard gRPC services: grpc.health.v1 (overall and per service, Check and List) and server
reflection (v1 and v1alpha), asked with the stubs generated from the vendored .proto files."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from service.generated.grpc.health.v1 import health_pb2, health_pb2_grpc
from service.generated.grpc.reflection.v1 import reflection_pb2 as rpb
from service.generated.grpc.reflection.v1 import reflection_pb2_grpc
from tests.support.server import HEALTH_SERVICES

OUR_SERVICES = {"digits.v1.DigitClassifier", "inference.GRPCInferenceService", "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}


@pytest.mark.parametrize("service", HEALTH_SERVICES)
def test_health_is_serving(channel, service):
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_of_unknown_service_is_not_found(channel):
    with pytest.raises(grpc.RpcError) as error:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_list_names_every_service_serving(channel):
    response = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5)
    assert {name: s.status for name, s in response.statuses.items()} == {
        name: health_pb2.HealthCheckResponse.SERVING for name in HEALTH_SERVICES}


def reflect(channel: grpc.Channel, version: str = "v1", **request) -> rpb.ServerReflectionResponse:
    """One request on a reflection stream of `version`; its one answer."""
    call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                 request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=rpb.ServerReflectionResponse.FromString)
    (answer,) = list(call(iter([rpb.ServerReflectionRequest(**request)]), timeout=10))
    return answer


def pool_of(answer: rpb.ServerReflectionResponse) -> descriptor_pool.DescriptorPool:
    """A fresh pool built from the answer's files alone (imports after their importers, so added
    in reverse): it builds only if the server sent every file the first one needs."""
    pool = descriptor_pool.DescriptorPool()
    for data in reversed(answer.file_descriptor_response.file_descriptor_proto):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(data))
    return pool


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_every_service(channel, version):
    answer = reflect(channel, version, list_services="")
    assert {s.name for s in answer.list_services_response.service} == OUR_SERVICES


def test_reflection_describes_each_service_with_the_files_it_imports(channel):
    for service in OUR_SERVICES:
        pool = pool_of(reflect(channel, file_containing_symbol=service))
        assert pool.FindServiceByName(service).methods, service
    digits = pool_of(reflect(channel, file_containing_symbol="digits.v1.DigitClassifier"))
    assert [m.name for m in digits.FindServiceByName("digits.v1.DigitClassifier").methods] == [
        "Classify", "ClassifyStream", "GetModelInfo"]
    health = pool_of(reflect(channel, file_by_filename="grpc/health/v1/health.proto"))
    assert [m.name for m in health.FindServiceByName("grpc.health.v1.Health").methods] == ["Check", "List", "Watch"]


def test_reflection_of_an_unknown_symbol_is_not_found_and_the_stream_goes_on(channel):
    answer = reflect(channel, file_containing_symbol="no.such.Service")
    assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "no.such.Service" in answer.error_response.error_message
    assert reflect(channel, file_by_filename="nope.proto").error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(stub.ServerReflectionInfo(iter([rpb.ServerReflectionRequest(file_containing_symbol="nope"),
                                                   rpb.ServerReflectionRequest(list_services="")]), timeout=10))
    assert len(answers) == 2 and answers[1].list_services_response.service


def test_a_file_comes_with_everything_it_imports_directly_or_not():
    from google.protobuf import api_pb2  # noqa: F401 - registers google/protobuf/api.proto, which imports two files

    from service.server.grpc_api.reflection import Reflection

    data = Reflection([]).answer(rpb.ServerReflectionRequest(file_containing_symbol="google.protobuf.Api")
                                 .SerializeToString(), None)
    names = [descriptor_pb2.FileDescriptorProto.FromString(f).name
             for f in rpb.ServerReflectionResponse.FromString(data).file_descriptor_response.file_descriptor_proto]
    assert names[0] == "google/protobuf/api.proto"
    assert {"google/protobuf/source_context.proto", "google/protobuf/type.proto", "google/protobuf/any.proto"} <= set(names)
    assert len(names) == len(set(names))
