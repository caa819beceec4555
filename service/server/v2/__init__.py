"""Triton's extensions to the Open Inference Protocol, protocol-neutral.

Each module answers one extension as plain Python data in Triton's JSON form (Triton's field names,
enum values as their names, 64-bit integers as numbers), from the served model, the server's real
settings and the shared metrics block. The gRPC adapter (`grpc_api/kserve_v2.py`) parses that data
into the protobuf messages of `proto/inference/` (the same field names); the REST adapter
(`http_api/kserve_v2_rest.py`) writes it as JSON. Neither adds meaning of its own.

- `model_config`: the model configuration extension (ModelConfig, GET …/config)
- `statistics`: the statistics extension (ModelStatistics, GET …/stats)
- `repository_index`: the model repository extension (RepositoryIndex, POST /v2/repository/index;
  load and unload are refused with a message saying how versions are loaded here)
"""
