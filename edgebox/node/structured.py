"""Structured-output constraints (`grammar`, `response_format`) checked at the edge.

Their size and nesting are bounded before anything is compiled (`runtimes.grammar_limits`),
and a runtime that compiles grammars does so here, in the caller's worker thread, so a
refusal is a 400 naming the field, and the event loop never parses a grammar.
"""

from __future__ import annotations

import json

from edgebox.api.errors import APIError
from edgebox.api.protocol import ChatCompletionRequest, CompletionRequest
from edgebox.runtimes.base import GrammarError, Runtime, SamplingParams
from edgebox.runtimes.grammar_limits import gbnf_problem, schema_problem


def constraint_param(body: ChatCompletionRequest | CompletionRequest) -> str:
    """The request field a grammar problem is about."""
    if body.grammar:
        return "grammar"
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_schema":
        return "response_format.json_schema"
    return "response_format"


def check_constraint(body: ChatCompletionRequest | CompletionRequest) -> None:
    """Refuse a grammar or JSON schema past the size and nesting limits (linear scans)."""
    problem = None
    if body.grammar:
        problem = gbnf_problem(body.grammar)
    elif body.response_format is not None and body.response_format.json_schema is not None:
        schema = body.response_format.json_schema.schema_
        problem = schema_problem(schema, json.dumps(schema, separators=(",", ":")))
    if problem:
        raise APIError(400, problem, param=constraint_param(body), code="invalid_value")


def prepare_constraint(
    runtime: Runtime, body: ChatCompletionRequest | CompletionRequest, params: SamplingParams
) -> None:
    """Blocking: bound the constraint, then let the runtime compile it now if it can."""
    check_constraint(body)
    prepare = getattr(runtime, "prepare_sampling", None)
    if prepare is None:
        return
    try:
        prepare(params)
    except GrammarError as exc:
        raise APIError(400, str(exc), param=constraint_param(body), code="invalid_value") from exc
