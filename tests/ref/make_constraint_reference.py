#!/usr/bin/env python3
"""Reference verdicts for finmoe's JSON-schema automaton: for each schema of
tests/data/constraint/schemas.json, random documents valid against it
(compact, indented with spaces and with tabs) and mutations of them (a
character deleted or replaced), each labelled with
  "valid":    Python's json parses it and the validator below accepts it
              (JSON Schema semantics: lengths in code points, escapes count once);
  "xgrammar": xgrammar's grammar for the schema (the engine vLLM uses) accepts it.
The C++ test JsonSchema.AgreesWithPythonAndXgrammar checks that finmoe
accepts exactly the valid texts and every text xgrammar accepts. (xgrammar
0.2 rejects some valid ones: enum objects pretty-printed, strings with
escapes or non-ASCII near maxLength, exponents under "minimum".)

Only texts whose whitespace lies inside finmoe's documented bound are kept
(none around the value; between tokens nothing, one space, or a newline and at
most 20 spaces/tabs), and numbers have at most two exponent digits: outside
those the two differ by design (docs/serving.md).

Usage: make_constraint_reference.py  (needs `pip install xgrammar`)
Writes tests/data/constraint/xgrammar_ref.jsonl.
"""
import json
import os
import random
import re

import xgrammar as xgr

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "constraint")


def instance(s, root, rng):
    if "$ref" in s:
        return instance(root["$defs"][s["$ref"].rsplit("/", 1)[1]], root, rng)
    if "const" in s:
        return s["const"]
    if "enum" in s:
        return rng.choice(s["enum"])
    for k in ("anyOf", "oneOf"):
        if k in s:
            return instance(rng.choice(s[k]), root, rng)
    t = s.get("type", rng.choice(["string", "integer", "number", "boolean", "null"]))
    if isinstance(t, list):
        t = rng.choice(t)
    nonneg = "minimum" in s
    if t == "null":
        return None
    if t == "boolean":
        return rng.random() < 0.5
    if t == "integer":
        v = rng.randint(-10**6, 10**6)
        return abs(v) if nonneg else v
    if t == "number":
        v = rng.choice([0.0, 1.5, 123.25, 1e-7, 6.02e23, 99999.875])
        return v if nonneg or rng.random() < 0.5 else -v
    if t == "string":
        p = s.get("pattern")
        if p == "[A-Z]{2}[0-9]{6}":
            return "".join(rng.choice("ABCXYZ") for _ in range(2)) + "".join(rng.choice("0123456789") for _ in range(6))
        if p == "[A-Z]{1,5}":
            return "".join(rng.choice("ABCXYZ") for _ in range(rng.randint(1, 5)))
        if p == "[a-f0-9]{4}":
            return "".join(rng.choice("abcdef0123456789") for _ in range(4))
        if s.get("format") == "date":
            return "%04d-%02d-%02d" % (rng.randint(1900, 2100), rng.randint(1, 12), rng.randint(1, 28))
        n = rng.randint(s.get("minLength", 0), s.get("maxLength", 8))
        return "".join(rng.choice(["a", "Z", "7", " ", '"', "\\", "\n", "é", "€", "😀", "/"]) for _ in range(n))
    if t == "array":
        n = rng.randint(s.get("minItems", 0), s.get("maxItems", 4))
        return [instance(s.get("items", {}), root, rng) for _ in range(n)]
    props = s.get("properties")
    if props:
        req = set(s.get("required", []))
        return {k: instance(v, root, rng) for k, v in props.items() if k in req or rng.random() < 0.5}
    n = rng.randint(0, s.get("maxProperties", 3))
    return {"k%d" % i: instance(s.get("additionalProperties", {}), root, rng) for i in range(n)}


def valid(v, s, root):
    """JSON Schema validation for the keywords of schemas.json."""
    if isinstance(s, bool):
        return s
    if "$ref" in s:
        return valid(v, root["$defs"][s["$ref"].rsplit("/", 1)[1]], root)
    if "const" in s and v != s["const"]:
        return False
    if "enum" in s and not any(v == e and type(v) is type(e) for e in s["enum"]):
        return False
    if "anyOf" in s and not any(valid(v, b, root) for b in s["anyOf"]):
        return False
    if "oneOf" in s and sum(valid(v, b, root) for b in s["oneOf"]) != 1:
        return False
    t = s.get("type")
    types = t if isinstance(t, list) else [t] if t else []
    num = isinstance(v, (int, float)) and not isinstance(v, bool)
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if types and not any(num if x == "number" else
                         (num and float(v).is_integer() and not isinstance(v, float)) if x == "integer" else
                         isinstance(v, kinds[x]) for x in types):
        return False
    if isinstance(v, str):
        if not s.get("minLength", 0) <= len(v) <= s.get("maxLength", 1 << 30):
            return False
        if "pattern" in s and not re.fullmatch(s["pattern"], v):
            return False
        if s.get("format") == "date" and not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", v):
            return False
    if num and "minimum" in s and v < s["minimum"]:
        return False
    if isinstance(v, list):
        if not s.get("minItems", 0) <= len(v) <= s.get("maxItems", 1 << 30):
            return False
        if not all(valid(e, s.get("items", True), root) for e in v):
            return False
    if isinstance(v, dict):
        props = s.get("properties")
        if props is not None:
            if any(k not in v for k in s.get("required", [])) or any(k not in props for k in v):
                return False
            if list(v) != [k for k in props if k in v]:  # finmoe writes the schema's order
                return False
            if not all(valid(v[k], props[k], root) for k in v):
                return False
        else:
            if not s.get("minProperties", 0) <= len(v) <= s.get("maxProperties", 1 << 30):
                return False
            if not all(valid(x, s.get("additionalProperties", True), root) for x in v.values()):
                return False
    return True


def parses_and_validates(text, schema):
    try:
        v = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except ValueError:
        return False
    return schema is True or valid(v, schema, schema)


def whitespace_in_bounds(text):
    """finmoe's bound: outside strings, whitespace runs are '', ' ' or '\\n' + up to 20 of [ \\t]."""
    if text[:1].isspace() or text[-1:].isspace():
        return False
    runs, in_str, esc, run = [], False, False, ""
    for c in text:
        if in_str:
            esc, in_str = (False, True) if esc else (c == "\\", c != '"')
            continue
        if c in " \t\n\r":
            run += c
            continue
        if run:
            runs.append(run)
            run = ""
        in_str = c == '"'
    return all(re.fullmatch(r" |\n[ \t]{0,20}", r) for r in runs)


def main():
    rng = random.Random(1234)
    schemas = json.load(open(os.path.join(DATA, "schemas.json")))
    out = []
    for si, schema in enumerate(schemas):
        grammar = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=True, strict_mode=True)
        texts = []
        for _ in range(12):
            doc = instance(schema, schema, rng)
            for fmt in (dict(ensure_ascii=False), dict(ensure_ascii=False, indent=2),
                        dict(ensure_ascii=False, indent="\t"), dict(ensure_ascii=False, separators=(",", ":"))):
                texts.append(json.dumps(doc, **fmt))
            base = texts[-3]
            for _ in range(3):
                i = rng.randrange(len(base))
                if rng.random() < 0.5:
                    texts.append(base[:i] + base[i + 1:])
                else:
                    texts.append(base[:i] + rng.choice('{}[]",:0aZ-.e') + base[i + 1:])
        seen = set()
        for t in texts:
            if t in seen or not t or not whitespace_in_bounds(t) or re.search(r"[eE][+-]?\d{3}", t):
                continue
            seen.add(t)
            out.append({"schema": si, "text": t, "valid": parses_and_validates(t, schema),
                        "xgrammar": bool(xgr.testing._is_grammar_accept_string(grammar, t))})
    with open(os.path.join(DATA, "xgrammar_ref.jsonl"), "w") as f:
        for r in out:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print("wrote %d texts: %d valid, %d accepted by xgrammar, %d valid ones xgrammar rejects, %d invalid ones it accepts"
          % (len(out), sum(r["valid"] for r in out), sum(r["xgrammar"] for r in out),
             sum(r["valid"] and not r["xgrammar"] for r in out), sum(r["xgrammar"] and not r["valid"] for r in out)))


if __name__ == "__main__":
    main()
