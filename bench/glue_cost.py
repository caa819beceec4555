"""CPU per request of everything between the transport and onnxruntime, with no gRPC at all.

The serving loop's figure (`bench/run.py`: server CPU per request) includes gRPC core's work and the
loop's per-event bookkeeping; this script times the rest on its own: the V2 adapter parsing a
one-image FP32 ModelInfer request, the core's checks and queue, the batcher's one onnxruntime call
for a turn of 32 requests, and the encoded replies. The difference between the two is what the
transport costs.

    python bench/glue_cost.py            # prints the median and best of 7 repetitions, µs per request
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/glue_cost.py` from anywhere
    sys.path.insert(0, str(REPO))

from bench.h2load_client import build_payload
from service.server.core import InferenceCore
from service.server.core_types import CoreSettings, InferenceResult
from service.server.errors import InferenceError
from service.server.grpc_api.kserve_v2 import KServeV2
from service.server.repository import ModelRepository

TURN = 32          # requests per loop turn, as at 1 × 32
TURNS = 300        # per repetition


def main() -> int:
    body = build_payload("kserve_v2", 1, "float32", False, "mnist_mlp", REPO / "data" / "mnist").message
    core = InferenceCore(ModelRepository(REPO / "models", "mnist_mlp"), None, CoreSettings())
    core.load()
    api = KServeV2(core, lambda: True)
    replies: list[bytes] = []

    def turn() -> None:
        for _ in range(TURN):
            pending = api.model_infer(body, None)
            encode = pending.encode

            def done(result: InferenceResult | None, error: InferenceError | None, encode=encode) -> None:
                replies.append(encode(result))

            core.submit(pending.request, done)
        core.compute_due()

    for _ in range(200):  # warm-up
        turn()
    costs = []
    for _ in range(7):
        replies.clear()
        start = time.process_time()
        for _ in range(TURNS):
            turn()
        costs.append((time.process_time() - start) / (TURNS * TURN) * 1e6)
        assert len(replies) == TURNS * TURN
    costs.sort()
    print(f"adapter + core + batcher + onnxruntime + encode: {costs[3]:.1f} µs per request "
          f"(median of 7; best {costs[0]:.1f}), {TURN} requests a turn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
