"""Asks the server for Triton's extensions with the public tritonclient package, over gRPC and HTTP;
prints what it got as JSON.

    python triton_extensions_client.py GRPC_ADDRESS HTTP_ADDRESS MODEL

Runs in its own process: tritonclient's generated modules and ours both define protobuf package
`inference`, and one Python process cannot hold both.
"""

from __future__ import annotations

import json
import sys

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def refusal(call) -> dict:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": str(exc.status()), "message": exc.message()}
    return {"status": "answered"}


def main(grpc_address: str, http_address: str, model: str) -> dict:
    over_grpc = grpcclient.InferenceServerClient(grpc_address)
    over_http = httpclient.InferenceServerClient(http_address)
    return {
        "grpc": {
            "config": over_grpc.get_model_config(model, as_json=True)["config"],
            "stats": over_grpc.get_inference_statistics(model, as_json=True),
            "all_stats": over_grpc.get_inference_statistics(as_json=True),
            "index": over_grpc.get_model_repository_index(as_json=True),
            "load": refusal(lambda: over_grpc.load_model(model)),
            "unload": refusal(lambda: over_grpc.unload_model(model)),
            "extensions": over_grpc.get_server_metadata(as_json=True).get("extensions", []),
        },
        "http": {
            "config": over_http.get_model_config(model),
            "stats": over_http.get_inference_statistics(model),
            "index": over_http.get_model_repository_index(),
            "load": refusal(lambda: over_http.load_model(model)),
            "unload": refusal(lambda: over_http.unload_model(model)),
            "extensions": over_http.get_server_metadata()["extensions"],
        },
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
