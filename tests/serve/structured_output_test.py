#!/usr/bin/env python3
"""Constrained decoding through `finmoe serve` with the official `openai`
client (tiny random model made with `finmoe init`): response_format
json_schema / json_object, vLLM's guided_json / guided_regex / guided_choice,
tool_choice required and named, streaming included. Every output is checked
with Python's own json and re modules and a small schema validator written
here, independent of the server's schema compiler; bad schemas must be 400s
naming the field.

Usage: structured_output_test.py FINMOE_BINARY TEST_DATA_DIR  (exit 77 = skipped)
"""
import json
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

openai = serve_util.import_openai()

FINMOE, DATA = serve_util.args()
MODEL_NAME = "tiny-structured"
SCRATCH = None
SERVER = None
# the random model closes strings rarely: favour the '"' token (id 1 in the Qwen3 vocabulary)
QUOTE_BIAS = {"logit_bias": {"1": 8}}

SLOTS = {
    "type": "object",
    "properties": {
        "intent": {"enum": ["transfer", "balance", "pay_bill"]},
        "amount": {"type": "number", "minimum": 0},
        "currency": {"enum": ["USD", "EUR", "CNY"]},
        "account": {"type": "string", "pattern": "[A-Z]{2}[0-9]{6}"},
        "memo": {"type": "string", "maxLength": 10},
    },
    "required": ["intent", "amount", "currency", "account"],
}


def valid(v, s):
    """A small JSON-schema check for the keywords these tests use."""
    if "enum" in s and v not in s["enum"]:
        return False
    if "const" in s and v != s["const"]:
        return False
    t = s.get("type")
    types = t if isinstance(t, list) else [t] if t else []
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if types and not any(
            (isinstance(v, (int, float)) and not isinstance(v, bool)) if x == "number" else
            (isinstance(v, int) and not isinstance(v, bool)) if x == "integer" else isinstance(v, kinds[x])
            for x in types):
        return False
    if isinstance(v, str):
        if len(v) > s.get("maxLength", 1 << 30) or len(v) < s.get("minLength", 0):
            return False
        if "pattern" in s and not re.fullmatch(s["pattern"], v):
            return False
    if isinstance(v, (int, float)) and "minimum" in s and v < s["minimum"]:
        return False
    if isinstance(v, dict):
        props = s.get("properties", {})
        if any(k not in v for k in s.get("required", [])):
            return False
        if props and any(k not in props for k in v):
            return False
        if any(not valid(v[k], props[k]) for k in v if k in props):
            return False
        if list(v) != [k for k in props if k in v]:  # the schema's order
            return False
    if isinstance(v, list):
        if len(v) < s.get("minItems", 0) or len(v) > s.get("maxItems", 1 << 30):
            return False
        if "items" in s and not all(valid(e, s["items"]) for e in v):
            return False
    return True


def setUpModule():
    global SCRATCH, SERVER
    SCRATCH = serve_util.ScratchDir("finmoe-serve-structured-")
    model = serve_util.make_tiny_model(FINMOE, DATA, SCRATCH.path)
    SERVER = serve_util.Server(FINMOE, model, "--served-model-name", MODEL_NAME, "--kv-cache-memory", "32MiB")


def tearDownModule():
    try:
        code = SERVER.stop()
        assert code == 0, "server exit code %s\n%s" % (code, SERVER.log())
    finally:
        SCRATCH.cleanup()


def client():
    return openai.OpenAI(base_url=SERVER.url + "/v1", api_key="none", max_retries=0, timeout=120)


def chat(**kw):
    kw.setdefault("messages", [{"role": "user", "content": "Send 20 EUR to DE123456"}])
    return client().chat.completions.create(model=MODEL_NAME, **kw)


class StructuredOutput(unittest.TestCase):
    def test_json_schema_outputs_validate(self):
        r = chat(n=4, seed=7, max_tokens=300, extra_body=QUOTE_BIAS,
                 response_format={"type": "json_schema",
                                  "json_schema": {"name": "slots", "schema": SLOTS, "strict": True}})
        complete = 0
        for ch in r.choices:
            if ch.finish_reason == "length":
                continue
            self.assertEqual(ch.finish_reason, "stop")
            v = json.loads(ch.message.content)
            self.assertTrue(valid(v, SLOTS), ch.message.content)
            complete += 1
        self.assertGreaterEqual(complete, 3)

    def test_streamed_guided_json_is_the_same_language(self):
        schema = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "maxItems": 5}
        stream = chat(stream=True, seed=3, max_tokens=200, extra_body={"guided_json": schema})
        text, finish = "", None
        for chunk in stream:
            for ch in chunk.choices:
                text += ch.delta.content or ""
                finish = ch.finish_reason or finish
        self.assertEqual(finish, "stop", text)
        self.assertTrue(valid(json.loads(text), schema), text)

    def test_guided_regex_and_choice(self):
        r = chat(n=3, seed=1, max_tokens=50, extra_body={"guided_regex": r"(BUY|SELL) [0-9]{1,4} [A-Z]{3}"})
        for ch in r.choices:
            self.assertRegex(ch.message.content, r"^(BUY|SELL) [0-9]{1,4} [A-Z]{3}$")
        r = client().completions.create(model=MODEL_NAME, prompt="Rating:", n=4, seed=2, max_tokens=10,
                                        extra_body={"guided_choice": ["buy", "hold", "sell"]})
        for ch in r.choices:
            self.assertIn(ch.text, ["buy", "hold", "sell"])
            self.assertEqual(ch.finish_reason, "stop")

    def test_json_object(self):
        r = chat(n=2, seed=5, max_tokens=300, extra_body=QUOTE_BIAS, response_format={"type": "json_object"})
        self.assertTrue(any(ch.finish_reason != "length" for ch in r.choices))
        for ch in r.choices:
            if ch.finish_reason != "length":
                self.assertIsInstance(json.loads(ch.message.content), dict)

    def test_tool_choice_required_and_named(self):
        tools = [
            {"type": "function", "function": {"name": "get_balance", "parameters": {
                "type": "object", "properties": {"account": {"type": "string", "pattern": "[A-Z]{2}[0-9]{4}"}},
                "required": ["account"]}}},
            {"type": "function", "function": {"name": "convert", "parameters": {
                "type": "object", "properties": {"amount": {"type": "number"}, "to": {"enum": ["USD", "EUR"]}},
                "required": ["amount", "to"]}}},
        ]
        params = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
        for choice, parallel in [("required", True), ({"type": "function", "function": {"name": "convert"}}, True),
                                 ("required", False)]:
            r = chat(n=2, seed=11, max_tokens=300, tools=tools, tool_choice=choice, parallel_tool_calls=parallel)
            self.assertTrue(any(ch.finish_reason != "length" for ch in r.choices))
            for ch in r.choices:
                if ch.finish_reason == "length":
                    continue
                self.assertEqual(ch.finish_reason, "tool_calls")
                self.assertGreaterEqual(len(ch.message.tool_calls), 1)
                if not parallel:
                    self.assertEqual(len(ch.message.tool_calls), 1)
                for tc in ch.message.tool_calls:
                    call = tc.function
                    if choice != "required":
                        self.assertEqual(call.name, "convert")
                    self.assertTrue(valid(json.loads(call.arguments), params[call.name]), call.arguments)

    def test_bad_schemas_are_400s_naming_the_field(self):
        bad = {"type": "object", "properties": {"x": {"type": "strng"}}}
        with self.assertRaises(openai.BadRequestError) as e:
            chat(max_tokens=5, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}})
        self.assertEqual(e.exception.body["param"], "response_format.json_schema.schema.properties.x.type")
        with self.assertRaises(openai.BadRequestError) as e:
            chat(max_tokens=5, extra_body={"guided_regex": "(?=lookahead)"})
        self.assertEqual(e.exception.body["param"], "guided_regex")


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
