"""Hostile input, property-based: whatever a client sends, both APIs answer with the precise status.

Every generated request carries the faults its generator put in, and so the status it must get
(hostile_requests.py); any other message is judged field by field against the stated rules
(hostile_oracle.py). Neither uses the server's code. In-process, the decoders return exactly the
pixels sent when the generator broke no pixel rule, and raise InvalidInput when it did, nothing
else. Over the wire, against the real `digits serve`, every call ends with exactly the expected
status (so only OK, INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED; never UNKNOWN/INTERNAL,
never a hang: every call has a deadline), OK answers match the offline model, the server logs no
traceback and no ERROR for any of it, and still answers correctly afterwards. Malformed protobuf
is sent through bytes-in/bytes-out calls so that it really reaches the server.

Run with `-s` to see the tally of cases and statuses; it is also written as JSON to
`<pytest basetemp>/hostile_input_statuses.json`. Set HOSTILE_SCALE=10 for a ten times longer run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.generated.digits.v1 import digits_pb2 as dpb
from service.generated.digits.v1 import digits_pb2_grpc as dgrpc
from service.generated.inference import grpc_predict_v2_pb2 as vpb
from service.generated.inference import grpc_predict_v2_pb2_grpc as vgrpc
from service.server.errors import InvalidInput
from service.server.grpc_api import digits_v1, kserve_v2
from tests.server.hostile_oracle import (ALLOWED, EXHAUSTED, FEATURES, INVALID, MESSAGE_LIMIT, MODEL, OK,
                                         StatusTally, digits_images, digits_status, sent_pixels_digits,
                                         sent_pixels_v2, v2_images, v2_status)
from tests.server.hostile_requests import digits_cases, digits_requests, garbled, unknown_fields, v2_cases, v2_requests
from tests.support.messages import ALL_OUTPUTS, classify_request
from tests.support.messages import v2_outputs as v2_output_arrays
from tests.support.mnist import mnist_test_images

SCALE = float(os.environ.get("HOSTILE_SCALE", "1"))
TIMEOUT = 15.0  # seconds; a call that needs longer counts as a hang (DEADLINE_EXCEEDED is not allowed)
CLASSIFY = "/digits.v1.DigitClassifier/Classify"
CLASSIFY_STREAM = "/digits.v1.DigitClassifier/ClassifyStream"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
FUZZ_TARGET = Path(__file__).with_name("fuzz_decode.py")
BAD_LOG = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b")
CODES = {code.value[0]: code for code in grpc.StatusCode}
TALLY = StatusTally()


def examples(count: int) -> int:
    return max(1, int(count * SCALE))


IN_PROCESS = settings(max_examples=examples(200), deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OVER_THE_WIRE = settings(max_examples=examples(150), deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def status_summary(tmp_path_factory):
    yield
    print("\n" + TALLY.table())
    TALLY.write(tmp_path_factory.getbasetemp() / "hostile_input_statuses.json")


@pytest.fixture(scope="module")
def served(channel):
    """The version the server answers with and each output's width, as the server itself says."""
    info = dgrpc.DigitClassifierStub(channel).GetModelInfo(dpb.GetModelInfoRequest(), timeout=TIMEOUT)
    metadata = vgrpc.GRPCInferenceServiceStub(channel).ModelMetadata(vpb.ModelMetadataRequest(name=MODEL),
                                                                    timeout=TIMEOUT)
    assert tuple(o.name for o in metadata.outputs) == ALL_OUTPUTS
    return info.version, {o.name: o.shape[1] for o in metadata.outputs}


@pytest.fixture
def leaves_server_clean(server, channel, offline):
    """After the test: no traceback/ERROR logged for any of it, and the server still answers correctly."""
    before = len(server.log_lines)
    yield
    images = mnist_test_images()[:3]
    response = dgrpc.DigitClassifierStub(channel).Classify(classify_request(images), timeout=TIMEOUT)
    want = offline(images)["probabilities"]
    np.testing.assert_allclose([p.probabilities for p in response.predictions], want, rtol=1e-4, atol=1e-5)
    server.sync_log()  # the log is read by a thread: wait until it has everything written so far
    new_log = "".join(server.log_lines[before:])
    assert not BAD_LOG.search(new_log), f"server logged an error for client input:\n{new_log[:4000]}"


def raw_call(channel: grpc.Channel, path: str, payload: bytes) -> tuple[grpc.StatusCode, list[bytes]]:
    """Sends bytes as they are (no client-side serialisation) and returns the status and raw answers."""
    try:
        if path == CLASSIFY_STREAM:
            call = channel.stream_stream(path, request_serializer=None, response_deserializer=None)
            return OK, list(call(iter([payload]), timeout=TIMEOUT))
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        return OK, [call(payload, timeout=TIMEOUT)]
    except grpc.RpcError as error:
        return error.code(), []


def check_digits_answer(request: dpb.ClassifyRequest, response: dpb.ClassifyResponse, offline) -> None:
    """An OK ClassifyResponse: one prediction per image, matching the offline model."""
    pixels = sent_pixels_digits(request)
    assert response.request_id == request.request_id and response.model_name == MODEL
    assert len(response.predictions) == len(pixels)
    got = np.array([p.probabilities for p in response.predictions], dtype=np.float32)
    assert got.shape == (len(pixels), 10)
    np.testing.assert_allclose(got, offline(pixels)["probabilities"], rtol=1e-4, atol=1e-5)
    assert [p.digit for p in response.predictions] == got.argmax(axis=1).tolist()
    names = [[a.name for a in p.activations] for p in response.predictions]
    expected_names = ["activation_1", "activation_2", "logits"] if request.include_activations else []
    assert names == [expected_names] * len(pixels)


def check_v2_answer(request: vpb.ModelInferRequest, response: vpb.ModelInferResponse, offline,
                    widths: dict[str, int]) -> None:
    """An OK ModelInferResponse: the outputs asked for, in order, shaped [N, width], matching offline."""
    pixels = sent_pixels_v2(request)
    names = [o.name for o in request.outputs] or list(ALL_OUTPUTS)
    assert response.model_name == MODEL and response.id == request.id
    binary = request.parameters["binary_data_output"].bool_param if "binary_data_output" in request.parameters \
        else False
    assert bool(response.raw_output_contents) == (bool(request.raw_input_contents) or binary)
    arrays = v2_output_arrays(response)
    assert list(arrays) == names
    want = offline(pixels, tuple(names))
    for name in names:
        assert arrays[name].shape == (len(pixels), widths[name])
        np.testing.assert_allclose(arrays[name], want[name], rtol=1e-4, atol=1e-5)


def check_decoded(pixels: np.ndarray, sent: np.ndarray) -> None:
    """What a decoder returns: [N, 784] uint8 or float32 in [0, 1], exactly the pixels sent."""
    assert pixels.ndim == 2 and pixels.shape[1] == FEATURES and len(pixels) >= 1
    assert pixels.dtype in (np.uint8, np.float32)
    if pixels.dtype == np.float32:
        assert np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1
    np.testing.assert_array_equal(pixels, sent)


# ----------------------------------------------------------------------------- in-process


@IN_PROCESS
@given(case=v2_cases())
def test_v2_decoding_returns_the_sent_pixels_or_raises_invalid_input(case):
    request = case.request
    assert v2_status(request, "1") == case.expected, case.faults  # the two derivations agree
    assert (v2_images(request) is None) == (not case.pixels_valid), case.faults
    try:
        pixels = kserve_v2.decode_pixels(request)
    except InvalidInput as error:
        assert str(error)  # says what is wrong
        assert not case.pixels_valid, f"refused pixels the generator did not break: {error}"
        TALLY.record("in-process v2 decode_pixels", INVALID)
        return
    assert case.pixels_valid, f"accepted pixels broken by {case.faults}"
    assert len(pixels) == request.inputs[0].shape[0]
    check_decoded(pixels, sent_pixels_v2(request).astype(pixels.dtype))
    assert isinstance(kserve_v2.wants_raw_output(request), bool)
    TALLY.record("in-process v2 decode_pixels", OK)


@IN_PROCESS
@given(case=digits_cases())
def test_digits_decoding_returns_the_sent_pixels_or_raises_invalid_input(case):
    request = case.request
    assert digits_status(request, "1") == case.expected, case.faults
    assert (digits_images(request) is None) == (not case.pixels_valid), case.faults
    try:
        pixels = digits_v1.decode_pixels(request)
    except InvalidInput as error:
        assert str(error)
        assert not case.pixels_valid, f"refused pixels the generator did not break: {error}"
        TALLY.record("in-process digits decode_pixels", INVALID)
        return
    assert case.pixels_valid, f"accepted pixels broken by {case.faults}"
    check_decoded(pixels, sent_pixels_digits(request))
    TALLY.record("in-process digits decode_pixels", OK)


@IN_PROCESS
@given(api=st.sampled_from(["v2", "digits"]), data=st.data())
def test_garbled_bytes_parse_or_fail_cleanly_in_process(api, data):
    """Any byte string either fails to parse (DecodeError) or decodes like any other message."""
    message_type, strategy, decode, images = (
        (vpb.ModelInferRequest, v2_requests(), kserve_v2.decode_pixels, v2_images) if api == "v2" else
        (dpb.ClassifyRequest, digits_requests(), digits_v1.decode_pixels, digits_images))
    payload = data.draw(garbled(strategy))
    try:
        request = message_type.FromString(payload)
    except DecodeError:
        TALLY.record(f"in-process {api} garbled bytes", "DecodeError")
        return
    expected = images(request)
    try:
        pixels = decode(request)
    except InvalidInput:
        assert expected is None, f"refused {expected} valid images"
        TALLY.record(f"in-process {api} garbled bytes", INVALID)
        return
    assert pixels.ndim == 2 and pixels.shape[1] == FEATURES and len(pixels) == expected
    TALLY.record(f"in-process {api} garbled bytes", OK)


@IN_PROCESS
@given(api=st.sampled_from(["v2", "digits"]), data=st.data())
def test_unknown_fields_change_nothing_in_process(api, data):
    message_type, case, decode = ((vpb.ModelInferRequest, data.draw(v2_cases()), kserve_v2.decode_pixels)
                                  if api == "v2" else
                                  (dpb.ClassifyRequest, data.draw(digits_cases()), digits_v1.decode_pixels))
    request = case.request
    parsed = message_type.FromString(request.SerializeToString() + data.draw(unknown_fields()))

    def outcome(message):
        try:
            return decode(message)
        except InvalidInput as error:
            return str(error)

    first, second = outcome(request), outcome(parsed)
    assert type(first) is type(second)
    assert isinstance(first, str) == (not case.pixels_valid), case.faults
    if isinstance(first, str):
        assert first == second
    else:
        np.testing.assert_array_equal(first, second)
    TALLY.record(f"in-process {api} unknown fields", INVALID if isinstance(first, str) else OK)


# ----------------------------------------------------------------------------- over the wire


@OVER_THE_WIRE
@given(data=st.data())
def test_v2_requests_get_the_precise_status_over_the_wire(channel, offline, served, leaves_server_clean, data):
    version, widths = served
    case = data.draw(v2_cases(versions=("", version)))
    request, expected = case.request, case.expected
    assert v2_status(request, version) == expected, case.faults
    try:
        response = vgrpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=TIMEOUT)
        status = OK
    except grpc.RpcError as error:
        status, response = error.code(), None
        assert error.details()  # every refusal says why
    TALLY.record("wire v2 ModelInfer", status)
    assert status == expected, case.faults
    if status == OK:
        check_v2_answer(request, response, offline, widths)


@OVER_THE_WIRE
@given(data=st.data())
def test_digits_requests_get_the_precise_status_over_the_wire(channel, offline, served, leaves_server_clean,
                                                              data):
    version, _ = served
    case = data.draw(digits_cases(versions=("", version)))
    request, expected = case.request, case.expected
    assert digits_status(request, version) == expected, case.faults
    try:
        response = dgrpc.DigitClassifierStub(channel).Classify(request, timeout=TIMEOUT)
        status = OK
    except grpc.RpcError as error:
        status, response = error.code(), None
        assert error.details()
    TALLY.record("wire digits Classify", status)
    assert status == expected, case.faults
    if status == OK:
        check_digits_answer(request, response, offline)


@settings(OVER_THE_WIRE, max_examples=examples(25))
@given(data=st.data())
def test_each_message_of_a_stream_gets_its_own_precise_status(channel, offline, served, leaves_server_clean,
                                                              data):
    version, _ = served
    cases = data.draw(st.lists(digits_cases(versions=("", version)), min_size=1, max_size=5))
    requests = [case.request for case in cases]
    for i, request in enumerate(requests):
        request.request_id = str(i)
    answers = list(dgrpc.DigitClassifierStub(channel).ClassifyStream(iter(requests), timeout=TIMEOUT))
    assert sorted(a.request_id for a in answers) == sorted(r.request_id for r in requests)
    for answer in answers:
        case = cases[int(answer.request_id)]
        request = case.request
        status = CODES[answer.error.code] if answer.HasField("error") else OK
        TALLY.record("wire digits ClassifyStream message", status)
        assert status == case.expected, (answer.error.message, case.faults)
        if status == OK:
            check_digits_answer(request, answer, offline)
        else:
            assert answer.error.message and not answer.predictions


@settings(OVER_THE_WIRE, max_examples=examples(100))
@given(api=st.sampled_from(["v2", "digits"]), data=st.data())
def test_unknown_fields_are_ignored_over_the_wire(channel, offline, served, leaves_server_clean, api, data):
    version, widths = served
    if api == "v2":
        case, path, answer_type = data.draw(v2_cases(versions=("", version))), MODEL_INFER, vpb.ModelInferResponse
    else:
        case, path, answer_type = data.draw(digits_cases(versions=("", version))), CLASSIFY, dpb.ClassifyResponse
    request, expected = case.request, case.expected
    status, answers = raw_call(channel, path, request.SerializeToString() + data.draw(unknown_fields()))
    TALLY.record(f"wire {api} unknown fields", status)
    assert status == expected, case.faults
    if status == OK:
        response = answer_type.FromString(answers[0])
        if api == "v2":
            check_v2_answer(request, response, offline, widths)
        else:
            check_digits_answer(request, response, offline)


@settings(OVER_THE_WIRE, max_examples=examples(200))
@given(path=st.sampled_from([MODEL_INFER, CLASSIFY, CLASSIFY_STREAM]), data=st.data())
def test_malformed_protobuf_is_invalid_argument_over_the_wire(channel, served, leaves_server_clean, path, data):
    """Bytes that are not a valid message must be refused as INVALID_ARGUMENT, not UNKNOWN/INTERNAL;
    bytes that happen to parse get the status that message gets."""
    version, _ = served
    message_type, strategy, expect = ((vpb.ModelInferRequest, v2_requests(), v2_status) if path == MODEL_INFER
                                      else (dpb.ClassifyRequest, digits_requests(), digits_status))
    payload = data.draw(garbled(strategy))
    status, answers = raw_call(channel, path, payload)
    if path == CLASSIFY_STREAM and status == OK and len(answers) == 1:  # per-message status of a stream
        answer = dpb.ClassifyResponse.FromString(answers[0])
        status = CODES[answer.error.code] if answer.HasField("error") else OK
    TALLY.record(f"wire malformed bytes {path.rsplit('/', 1)[1]}", status)
    assert status in ALLOWED, f"{status} for {payload!r}"
    try:
        parsed = message_type.FromString(payload)
    except DecodeError:
        assert status == INVALID, f"{status} for unparseable {payload!r}"
        return
    assert status == expect(parsed, version)


@settings(OVER_THE_WIRE, max_examples=examples(6))
@given(api=st.sampled_from(["v2", "digits"]),
       size=st.one_of(st.integers(MESSAGE_LIMIT - 64, MESSAGE_LIMIT + 64),
                      st.integers(MESSAGE_LIMIT + 1, 3 * MESSAGE_LIMIT // 2)))
def test_requests_around_the_message_size_limit(channel, served, leaves_server_clean, api, size):
    """Over the limit: RESOURCE_EXHAUSTED before any decoding; under it: the usual precise status."""
    version, _ = served
    payload = bytes(size)
    if api == "v2":
        tensor = vpb.ModelInferRequest.InferInputTensor(name="pixels", datatype="UINT8",
                                                        shape=[size // FEATURES, FEATURES])
        request = vpb.ModelInferRequest(model_name=MODEL, raw_input_contents=[payload], inputs=[tensor])
        path, expected = MODEL_INFER, v2_status(request, version)
    else:
        request = dpb.ClassifyRequest(pixels=payload, pixel_format=dpb.PIXEL_FORMAT_UINT8)
        path, expected = CLASSIFY, digits_status(request, version)
    if request.ByteSize() > MESSAGE_LIMIT:
        expected = EXHAUSTED
    status, _ = raw_call(channel, path, request.SerializeToString())
    TALLY.record(f"wire {api} message size limit", status)
    assert status == expected


# ----------------------------------------------------------------------------- coverage-guided fuzzing


def test_short_fuzz_run_of_both_decoders_finds_no_crash(tmp_path):
    """The atheris target for 20 000 inputs or 10 s, whichever comes first; the long run is in its
    docstring. Exit code 0 means no exception other than InferenceError/DecodeError escaped."""
    tally, corpus = tmp_path / "tally.json", tmp_path / "corpus"
    corpus.mkdir()  # empty: the target seeds it with valid requests of both APIs
    result = subprocess.run(
        [sys.executable, str(FUZZ_TARGET), str(corpus), "-atheris_runs=20000", "-max_total_time=10",
         f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
        cwd=tmp_path, env={**os.environ, "FUZZ_TALLY_FILE": str(tally)},
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-6000:]
    counts = json.loads(tally.read_text())
    as_status = {"decoded": OK, "InvalidInput": INVALID, "DecodeError": "DecodeError"}
    for outcome, times in counts.items():  # e.g. "v2 structured InvalidInput": 1648
        api, kind, what = outcome.split(" ")
        TALLY.record(f"fuzz_decode.py {api} {kind}", as_status.get(what, what), times)
    # the target must get past parsing into the decoders on both APIs, or it tests nothing
    assert any(k.startswith("v2 ") and k.endswith(" decoded") for k in counts), counts
    assert any(k.startswith("digits ") and k.endswith(" decoded") for k in counts), counts
