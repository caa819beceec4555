"""Logging set-up: plain lines for people, or one JSON object per line for log pipelines."""

from __future__ import annotations

import json
import logging
import os
import sys


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
                 "logger": record.name, "pid": record.process, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class UndecodableMetadataFilter(logging.Filter):
    """Drops grpcio's traceback for a metadata value that is not UTF-8.

    grpcio's Cython layer logs an exception ("Invalid encoding on ...") each time it decodes such a
    value, before our code sees the call; the serving loop then refuses that call with
    INVALID_ARGUMENT. A client could otherwise fill the log with one traceback per call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Invalid encoding on")


def configure(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(
        "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("grpc._cython.cygrpc").addFilter(UndecodableMetadataFilter())
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
