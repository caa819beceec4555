"""Field layout of protobuf messages, comparable across processes (imports no generated code)."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FileDescriptor


def describe(message: Descriptor, prefix: str = "") -> dict[str, list]:
    """name -> sorted (field name, number, type, repeated) of every field, nested messages included."""
    name = prefix + message.name
    found = {name: sorted((f.name, f.number, f.type, f.is_repeated) for f in message.fields)}
    for nested in message.nested_types:
        if not nested.GetOptions().map_entry:
            found.update(describe(nested, name + "."))
    return found


def enum_values(file: FileDescriptor) -> dict[str, list]:
    """"enum <name>" -> sorted (value name, number, 0, False) of every enum of a file, nested ones
    included, in the same shape as `describe` so that both compare alike."""
    found = {}

    def add(enum, prefix: str) -> None:
        found["enum " + prefix + enum.name] = sorted((v.name, v.number, 0, False) for v in enum.values)

    def walk(message: Descriptor, prefix: str) -> None:
        for enum in message.enum_types:
            add(enum, prefix + message.name + ".")
        for nested in message.nested_types:
            walk(nested, prefix + message.name + ".")

    for enum in file.enum_types_by_name.values():
        add(enum, "")
    for message in file.message_types_by_name.values():
        walk(message, "")
    return found
