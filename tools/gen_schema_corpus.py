#!/usr/bin/env python3
"""Writes tests/fixtures/schema_corpus.json: real-world-shaped JSON schemas
for the structured-output corpus test (tests/integration/
test_structured_corpus.py). Deterministic (seeded); no dependencies.

Each entry is {"name", "schema", "refuse"}: refuse is null for a schema
inside the subset README.md documents (it must compile), or the keyword the
server must name in its 400 (a schema that uses one outside it, as real
schemas do: oneOf, patternProperties, uniqueItems, number bounds, ...).

The shapes are those of public APIs: users and addresses, orders with line
items, products, paginated lists, error envelopes, webhook events, configs
with maps, geo features, invoices nested several levels, search filters with
anyOf, recursive comments and categories through $ref/$defs, and tool-call
parameter objects, with enums, formats, nullable fields, bounds and
optional properties mixed in at random.

Usage: gen_schema_corpus.py [OUT] (default tests/fixtures/schema_corpus.json)
"""
import json
import os
import random
import sys

N_OK, N_REFUSE = 210, 30
R = random.Random(20260101)

WORDS = ["id", "name", "email", "status", "created_at", "updated_at", "title", "description", "price", "currency",
         "quantity", "sku", "tags", "url", "count", "total", "city", "country", "zip", "street", "phone", "role",
         "active", "score", "rating", "notes", "kind", "level", "version", "owner", "amount", "due_date", "label",
         "priority", "region", "lang", "timezone", "verified", "comment", "parent_id"]
ENUMS = [["active", "inactive", "pending"], ["low", "medium", "high", "urgent"], ["USD", "EUR", "JPY", "GBP"],
         ["admin", "editor", "viewer"], ["draft", "published", "archived"], ["asc", "desc"],
         ["created", "shipped", "delivered", "cancelled", "refunded"], ["en", "fr", "de", "ja", "zh"]]
FORMATS = ["date", "date-time", "uuid", "email", "ipv4", "time"]


def pick_names(k):
    return R.sample(WORDS, k)


def scalar():
    """A leaf schema of a common kind."""
    k = R.randrange(12)
    if k == 0:
        return {"type": "string"}
    if k == 1:
        return {"type": "string", "maxLength": R.choice([8, 16, 32, 64])}
    if k == 2:
        return {"type": "string", "minLength": 1, "maxLength": R.choice([10, 40])}
    if k == 3:
        return {"type": "string", "format": R.choice(FORMATS)}
    if k == 4:
        return {"type": "string", "enum": R.choice(ENUMS)}
    if k == 5:
        return {"type": "integer"}
    if k == 6:
        return {"type": "integer", "minimum": 0}
    if k == 7:
        lo = R.choice([0, 1, -5])
        return {"type": "integer", "minimum": lo, "maximum": lo + R.choice([5, 10, 100, 200])}
    if k == 8:
        return {"type": "number"}
    if k == 9:
        return {"type": "boolean"}
    if k == 10:
        return {"type": [R.choice(["string", "integer", "boolean"]), "null"]}
    return {"anyOf": [{"type": "string", "maxLength": 12}, {"type": "null"}]}


def obj(depth, width=None, strict=None):
    """An object of scalar, nested object and array-of-object properties."""
    names = pick_names(width or R.randint(1, 5))
    props = {}
    for n in names:
        r = R.random()
        if depth > 0 and r < 0.2:
            props[n] = obj(depth - 1)
        elif depth > 0 and r < 0.35:
            a = {"type": "array", "items": obj(depth - 1, R.randint(1, 3))}
            if R.random() < 0.5:
                a["maxItems"] = R.choice([2, 3, 5])
            if R.random() < 0.3:
                a["minItems"] = 1
            props[n] = a
        elif r < 0.45:
            props[n] = {"type": "array", "items": scalar(), "maxItems": R.choice([3, 4, 10])}
        else:
            props[n] = scalar()
        if R.random() < 0.3:
            props[n]["description"] = f"The {n.replace('_', ' ')}."
    o = {"type": "object", "properties": props}
    req = [n for n in names if R.random() < 0.7]
    if req:
        o["required"] = req
    if strict if strict is not None else R.random() < 0.6:
        o["additionalProperties"] = False
    return o


def shape_user():
    return {"title": "User", "type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"}, "email": {"type": "string", "format": "email"},
        "name": {"type": "string", "maxLength": 40}, "role": {"enum": R.choice(ENUMS)},
        "address": {"$ref": "#/$defs/Address"}, "tags": {"type": "array", "items": {"type": "string", "maxLength": 12},
                                                         "maxItems": 4}},
        "required": ["id", "email", "name"] + (["address"] if R.random() < 0.5 else []),
        "additionalProperties": False,
        "$defs": {"Address": {"type": "object", "properties": {
            "street": {"type": "string"}, "city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            "country": {"type": "string", "enum": ["US", "FR", "DE", "JP"]}}, "required": ["city", "country"],
            "additionalProperties": False}}}


def shape_order():
    item = obj(R.randint(0, 1), R.randint(2, 4))
    item["properties"]["quantity"] = {"type": "integer", "minimum": 1, "maximum": 99}
    item["properties"]["sku"] = {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}
    item["required"] = sorted(set(item.get("required", [])) | {"sku", "quantity"})
    return {"type": "object", "properties": {
        "order_id": {"type": "string"}, "status": {"enum": ENUMS[6]},
        "items": {"type": "array", "items": {"$ref": "#/definitions/Item"}, "minItems": 1, "maxItems": 3},
        "total": {"type": "number", "minimum": 0}, "placed_at": {"type": "string", "format": "date-time"}},
        "required": ["order_id", "status", "items"], "definitions": {"Item": item}}


def shape_page():
    return {"type": "object", "properties": {
        "data": {"type": "array", "items": obj(R.randint(0, 2), R.randint(1, 4)), "maxItems": R.choice([2, 3])},
        "next_cursor": {"type": ["string", "null"]}, "has_more": {"type": "boolean"},
        "total": {"type": "integer", "minimum": 0}}, "required": ["data", "has_more"], "additionalProperties": False}


def shape_error():
    return {"type": "object", "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "string", "enum": ["invalid_request", "not_found", "rate_limited", "internal"]},
        "message": {"type": "string", "maxLength": 80}, "param": {"type": ["string", "null"]},
        "retry_after": {"type": "integer", "minimum": 0}},
        "required": ["code", "message"], "additionalProperties": False}}, "required": ["error"]}


def shape_event():
    payload = obj(R.randint(1, 3))
    return {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"}, "type": {"const": R.choice(["order.created", "user.deleted",
                                                                                  "invoice.paid"])},
        "created": {"type": "integer", "minimum": 0}, "data": {"$ref": "#/$defs/Payload"},
        "livemode": {"type": "boolean"}},
        "required": ["id", "type", "data"], "additionalProperties": False, "$defs": {"Payload": payload}}


def shape_config():
    return {"type": "object", "properties": {
        "version": {"const": 2}, "features": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "limits": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
        "env": {"enum": ["dev", "staging", "prod"]}, "labels": {"type": "object",
                                                               "additionalProperties": {"type": "string",
                                                                                        "maxLength": 16}}},
        "required": ["version", "env"]}


def shape_geo():
    point = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    return {"type": "object", "properties": {
        "type": {"const": "Feature"}, "geometry": {"type": "object", "properties": {
            "type": {"enum": ["Point", "LineString"]}, "coordinates": {"anyOf": [point, {"type": "array",
                                                                                       "items": point,
                                                                                       "maxItems": 3}]}},
            "required": ["type", "coordinates"], "additionalProperties": False},
        "properties": obj(1, R.randint(1, 3))}, "required": ["type", "geometry"], "additionalProperties": False}


def shape_invoice():
    line = {"type": "object", "properties": {
        "description": {"type": "string", "maxLength": 30}, "amount": {"type": "integer", "minimum": 0},
        "tax": {"type": "object", "properties": {"rate": {"type": "number", "minimum": 0},
                                                 "region": {"type": "string", "enum": ["EU", "US", "APAC"]},
                                                 "breakdown": {"type": "array", "items": obj(0, 2), "maxItems": 2}},
                "required": ["rate"]}}, "required": ["description", "amount"]}
    return {"type": "object", "properties": {
        "customer": {"type": "object", "properties": {"name": {"type": "string"}, "billing": {
            "type": "object", "properties": {"address": obj(1, 3), "vat": {"type": ["string", "null"]}}}},
            "required": ["name"]},
        "lines": {"type": "array", "items": line, "maxItems": 3}, "currency": {"enum": ENUMS[2]},
        "due_date": {"type": "string", "format": "date"}}, "required": ["customer", "lines", "currency"]}


def shape_search():
    return {"type": "object", "properties": {
        "query": {"type": "string", "maxLength": 40},
        "filters": {"type": "array", "maxItems": 3, "items": {"anyOf": [
            {"type": "object", "properties": {"field": {"enum": ["price", "rating"]}, "op": {"enum": ["lt", "gt"]},
                                              "value": {"type": "number"}}, "required": ["field", "op", "value"],
             "additionalProperties": False},
            {"type": "object", "properties": {"field": {"const": "tag"}, "in": {"type": "array",
                                                                             "items": {"type": "string"},
                                                                             "maxItems": 3}},
             "required": ["field", "in"], "additionalProperties": False}]}},
        "sort": {"enum": ["asc", "desc"]}, "page": {"type": "integer", "minimum": 1, "maximum": 50}},
        "required": ["query"]}


def shape_recursive():
    k = R.randrange(3)
    if k == 0:
        return {"$ref": "#/$defs/Comment", "$defs": {"Comment": {"type": "object", "properties": {
            "author": {"type": "string", "maxLength": 20}, "text": {"type": "string", "maxLength": 60},
            "replies": {"type": "array", "items": {"$ref": "#/$defs/Comment"}, "maxItems": 2}},
            "required": ["author", "text"], "additionalProperties": False}}}
    if k == 1:
        return {"type": "object", "properties": {"name": {"type": "string"}, "children": {
            "type": "array", "items": {"$ref": "#"}, "maxItems": 2}}, "required": ["name"]}
    return {"$defs": {"Node": {"type": "object", "properties": {"value": {"type": "integer"}, "next": {
        "anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}}, "required": ["value", "next"]}},
        "type": "object", "properties": {"head": {"$ref": "#/$defs/Node"}}, "required": ["head"]}


def shape_tool_params():
    o = obj(R.randint(0, 2), R.randint(1, 4), strict=True)
    o["required"] = list(o["properties"])  # OpenAI's strict mode: every property required
    return o


SHAPES = [shape_user, shape_order, shape_page, shape_error, shape_event, shape_config, shape_geo, shape_invoice,
          shape_search, shape_recursive, shape_tool_params, lambda: obj(R.randint(1, 4))]

# Keywords outside the subset, each placed where real schemas put it.
REFUSED = [
    ("oneOf", lambda s: {"oneOf": [{"type": "string"}, {"type": "integer"}]}),
    ("patternProperties", lambda s: {"type": "object", "patternProperties": {"^x-": {"type": "string"}}}),
    ("uniqueItems", lambda s: {"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
    ("not", lambda s: {"not": {"type": "null"}}),
    ("prefixItems", lambda s: {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}]}),
    ("maximum", lambda s: {"type": "number", "minimum": 0, "maximum": 1}),
    ("format", lambda s: {"type": "string", "format": "hostname"}),
    ("multipleOf", lambda s: {"type": "integer", "multipleOf": 5}),
    ("if", lambda s: {"type": "object", "if": {"properties": {"a": {"const": 1}}}, "then": {"required": ["b"]}}),
    ("dependentRequired", lambda s: {"type": "object", "properties": {"a": {"type": "string"}},
                                     "dependentRequired": {"a": ["b"]}}),
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures",
                                                              "schema_corpus.json")
    corpus = []
    for i in range(N_OK):
        f = SHAPES[i % len(SHAPES)]
        name = getattr(f, "__name__", "shape").replace("shape_", "").replace("<lambda>", "object")
        corpus.append({"name": f"{name}-{i}", "schema": f(), "refuse": None})
    for i in range(N_REFUSE):
        kw, make = REFUSED[i % len(REFUSED)]
        base = obj(R.randint(1, 3))
        bad = make(base)
        # the refused keyword sits a level down, after supported properties
        base["properties"]["extra_" + kw.lower()] = bad
        corpus.append({"name": f"refuse-{kw}-{i}", "schema": base, "refuse": kw})
    with open(out, "w") as fh:
        json.dump(corpus, fh, indent=None, separators=(",", ":"))
        fh.write("\n")
    print(f"wrote {out}: {N_OK} schemas inside the subset, {N_REFUSE} with a keyword outside it")


if __name__ == "__main__":
    main()
