"""The committed protobuf code is what proto/ generates, and our V2 messages match tritonclient's."""

from __future__ import annotations

import filecmp
import json
import re
import subprocess
import sys
import tomllib

from service.generated.inference import grpc_predict_v2_pb2 as ours
from service.generated.inference import model_config_pb2 as our_config
from tests.support import REPO
from tests.support.descriptor_shape import describe, enum_values

sys.path.insert(0, str(REPO / "proto"))
import generate  # noqa: E402


def test_generated_code_is_fresh(tmp_path):
    written = generate.generate(tmp_path)
    committed = REPO / "service" / "generated"
    stale = [str(rel) for rel in written if not filecmp.cmp(tmp_path / rel, committed / rel, shallow=False)]
    extra = sorted(str(p.relative_to(committed)) for p in committed.rglob("*.py*")
                   if "__pycache__" not in p.parts and p.relative_to(committed) not in written)
    assert not stale and not extra, f"run `python proto/generate.py`; stale: {stale}, unexpected: {extra}"


def pyproject_requirement(extra: str | None, name: str) -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["optional-dependencies"][extra] if extra else project["dependencies"]
    (found,) = [r for r in requirements if re.match(rf"{re.escape(name)}\b(?![-\[])", r)]
    return found


def test_the_generator_is_pinned_to_what_generate_py_checks():
    assert pyproject_requirement("test", "grpcio-tools") == f"grpcio-tools=={generate.GRPCIO_TOOLS}"


def test_protobuf_pin_starts_at_the_generated_codes_runtime_floor_and_allows_6_and_7():
    """Each _pb2.py refuses a protobuf runtime older than the protoc that wrote it: our floor is
    that version, and the range takes 6 (tritonclient's) and 7 (newest)."""
    declared = set()
    for module in (REPO / "service" / "generated").rglob("*_pb2.py"):
        found = re.search(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),"
                          r"\s*(\d+),", module.read_text())
        assert found, module
        declared.add(tuple(map(int, found.groups())))
    (floor,) = declared
    assert floor[0] == 6
    assert pyproject_requirement(None, "protobuf") == f"protobuf>={'.'.join(map(str, floor))},<8"


TRITON_SIDE = """
import json, sys
from tritonclient.grpc import model_config_pb2, service_pb2
sys.path.insert(0, sys.argv[1])
from tests.support.descriptor_shape import describe, enum_values
out = {}
for module in (service_pb2, model_config_pb2):
    for message in module.DESCRIPTOR.message_types_by_name.values():
        out.update(describe(message))
    out.update(enum_values(module.DESCRIPTOR))
print(json.dumps(out))
"""


def test_open_inference_messages_are_wire_compatible_with_tritonclient():
    run = subprocess.run([sys.executable, "-c", TRITON_SIDE, str(REPO)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    theirs = json.loads(run.stdout)
    mine = {}
    for module in (ours, our_config):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            mine.update(describe(message))
        mine.update(enum_values(module.DESCRIPTOR))
    for name, fields in mine.items():
        assert name in theirs, name
        their_fields = {tuple(f[:2]): f for f in map(tuple, theirs[name])}
        for field in fields:
            assert their_fields.get(tuple(field[:2])) == tuple(field), f"{name}.{field[0]} differs from Triton's"
    their_service = json.loads(subprocess.run(
        [sys.executable, "-c", "import json; from tritonclient.grpc import service_pb2 as s; "
         "print(json.dumps([[m.name, m.input_type.name, m.output_type.name] "
         "for m in s.DESCRIPTOR.services_by_name['GRPCInferenceService'].methods]))"],
        capture_output=True, text=True, check=True).stdout)
    our_methods = [[m.name, m.input_type.name, m.output_type.name]
                   for m in ours.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods]
    assert all(method in their_service for method in our_methods), (our_methods, their_service)
