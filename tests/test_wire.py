"""service.wire: the hand-encoded protobuf field of raw V2 replies is what protobuf itself writes."""

from __future__ import annotations

import pytest

from service.generated.inference import grpc_predict_v2_pb2 as pb
from service.wire import length_delimited


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 2_097_152])
def test_hand_encoded_output_field_is_what_protobuf_writes(size):
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    assert length_delimited(6, payload) == pb.ModelInferResponse(raw_output_contents=[payload]).SerializeToString()
    assert length_delimited(3, b"req-7") == pb.ModelInferResponse(id="req-7").SerializeToString()
