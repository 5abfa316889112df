r"""llama.cpp's JSON-schema converter with GBNF string literals escaped correctly.

llama-cpp-python's `SchemaConverter._format_literal` escapes quotes, CR and LF but not
backslashes, so a JSON value written into the grammar (an `enum` or `const` value, a property
name) that holds `"` or `\\` ends the GBNF literal early: `{"enum": ["a\\"b"]}` gave a grammar
llama.cpp could not parse (400 for a valid schema), and `{"enum": ["a\\\\b"]}` a grammar that
forced the different, wrong string `"a\\b"` (a backspace). The rest of the text then reads as
grammar syntax the client chose.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\r": "\\r", "\n": "\\n"}
_TO_ESCAPE = re.compile(r'[\\"\r\n]')


class LiteralSafeConverter(SchemaConverter):
    """The converter, with `_format_literal` escaping as llama.cpp's GBNF parser reads."""

    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)

    def _format_literal(self, literal: str) -> str:
        return '"' + _TO_ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], literal) + '"'


def schema_gbnf(schema: Any, name: str = "stdin") -> str:
    """The GBNF of a parsed JSON schema (what `json_schema_to_gbnf` does, escaped right)."""
    converter = LiteralSafeConverter()
    converter.visit(converter.resolve_refs(schema, name), "")
    return str(converter.format_grammar())


def schema_json_gbnf(schema_json: str) -> str:
    return schema_gbnf(json.loads(schema_json))
