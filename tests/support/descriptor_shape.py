"""Field layout of protobuf messages, comparable across processes (imports no generated code)."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor


def describe(message: Descriptor, prefix: str = "") -> dict[str, list]:
    """name -> sorted (field name, number, type, repeated) of every field, nested messages included."""
    name = prefix + message.name
    found = {name: sorted((f.name, f.number, f.type, f.is_repeated) for f in message.fields)}
    for nested in message.nested_types:
        if not nested.GetOptions().map_entry:
            found.update(describe(nested, name + "."))
    return found
