#!/usr/bin/env python3
"""Reference renderings of real chat templates, made with Python jinja2 the
way Hugging Face transformers renders them (transformers'
render_jinja_template: ImmutableSandboxedEnvironment, trim_blocks,
lstrip_blocks, its tojson / raise_exception / strftime_now).

Writes tests/data/chat_templates/:
  templates/<name>.jinja   the template sources (third-party data; see README.md)
  conversations.json       the conversations and render settings
  expected/<name>.jsonl    one line per (conversation, add_generation_prompt,
                           kwargs): {"case", "output"} or {"case", "error",
                           "raised"} where jinja2 refused the conversation
  snippets.jsonl           small templates exercising one feature each, with
                           their context and jinja2's output (or error)

Usage: make_chat_template_reference.py TEMPLATE_DIR [TEMPLATE_DIR...]
  where TEMPLATE_DIR holds *.jinja files (e.g. llama.cpp's models/templates/).
The templates of tests/data/tokenizer/*/tokenizer_config.json are added.
strftime_now() sees a fixed time, 2024-07-26 12:00:00, so outputs are stable;
finmoe's test renders with the same fixed time.
"""
import datetime as _dt
import glob
import json
import os
import sys

import jinja2
import transformers
from transformers.utils import chat_template_utils as ctu

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "chat_templates")
FIXED_NOW = _dt.datetime(2024, 7, 26, 12, 0, 0)


class _FixedDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_NOW


ctu.datetime = _FixedDatetime  # strftime_now() formats this time

TOOLS = [
    {"type": "function", "function": {
        "name": "get_stock_price",
        "description": "Latest traded price of a listed stock.",
        "parameters": {"type": "object", "properties": {
            "ticker": {"type": "string", "description": "Exchange ticker, e.g. \"AAPL\""},
            "currency": {"type": "string", "enum": ["USD", "EUR", "CNY"]}},
            "required": ["ticker"]}}},
    {"type": "function", "function": {
        "name": "convert_amount",
        "description": "Convert an amount between currencies at today's rate.",
        "parameters": {"type": "object", "properties": {
            "amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}},
            "required": ["amount", "from", "to"]}}},
]

CALL = {"id": "call_0001", "type": "function",
        "function": {"name": "get_stock_price", "arguments": {"ticker": "AAPL", "currency": "USD"}}}
CALL_STR = {"id": "call_0002", "type": "function",
            "function": {"name": "convert_amount", "arguments": "{\"amount\": 12.5, \"from\": \"USD\", \"to\": \"EUR\"}"}}

SYS = "You are a careful financial assistant. Answer briefly."
CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "What is a bond coupon?"}],
    "system_user": [{"role": "system", "content": SYS},
                    {"role": "user", "content": "Define EBITDA in one line."}],
    "multi_turn": [{"role": "system", "content": SYS},
                   {"role": "user", "content": "What is the P/E ratio?"},
                   {"role": "assistant", "content": "Price divided by earnings per share."},
                   {"role": "user", "content": "And a high one means?"}],
    "no_system_multi": [{"role": "user", "content": "  Hi!  "},
                        {"role": "assistant", "content": "Hello. How can I help?"},
                        {"role": "user", "content": "Explain \"yield\" vs 'return'\nin two lines."}],
    "unicode": [{"role": "user", "content": "营业收入同比增长 12%，净利润呢？ — €5 ≈ ¥39 ✓"}],
    "tools_defined": [{"role": "system", "content": SYS},
                      {"role": "user", "content": "What does Apple trade at?"}],
    "tool_call_result": [{"role": "user", "content": "What does Apple trade at?"},
                         {"role": "assistant", "content": "", "tool_calls": [CALL]},
                         {"role": "tool", "tool_call_id": "call_0001", "name": "get_stock_price",
                          "content": "{\"price\": 227.52, \"currency\": \"USD\"}"},
                         {"role": "assistant", "content": "Apple last traded at 227.52 USD."},
                         {"role": "user", "content": "In euros?"}],
    "tool_call_string_args": [{"role": "system", "content": SYS},
                              {"role": "user", "content": "Convert 12.5 USD to EUR."},
                              {"role": "assistant", "content": None, "tool_calls": [CALL_STR]},
                              {"role": "tool", "tool_call_id": "call_0002", "name": "convert_amount",
                               "content": "11.61"}],
    "reasoning": [{"role": "user", "content": "Is 17 prime?"},
                  {"role": "assistant", "content": "Yes, 17 is prime.",
                   "reasoning_content": "Check divisors up to 4: 2, 3 do not divide 17."},
                  {"role": "user", "content": "And 21?"}],
    "think_in_content": [{"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
                         {"role": "user", "content": "3+3?"}],
    "assistant_first": [{"role": "assistant", "content": "Welcome to the desk."},
                        {"role": "user", "content": "Thanks."}],
    "user_user": [{"role": "user", "content": "First question."},
                  {"role": "user", "content": "Second question."}],
}
WITH_TOOLS = {"tools_defined", "tool_call_result", "tool_call_string_args"}
# Extra keyword arguments rendered for every conversation besides {} (as
# apply_chat_template(..., **kwargs) passes them to the template).
KWARG_SETS = [{}, {"enable_thinking": False}, {"enable_thinking": True}]


def cases():
    for name in CONVERSATIONS:
        for agp in (False, True):
            for kw in KWARG_SETS:
                if kw and name not in ("system_user", "reasoning", "tool_call_result"):
                    continue
                yield {"conversation": name, "add_generation_prompt": agp, "kwargs": kw,
                       "tools": name in WITH_TOOLS}


def render(template, bos, eos, case):
    messages = CONVERSATIONS[case["conversation"]]
    tools = TOOLS if case["tools"] else None
    out, _ = ctu.render_jinja_template(
        conversations=[json.loads(json.dumps(messages))], tools=tools, chat_template=template,
        add_generation_prompt=case["add_generation_prompt"], bos_token=bos, eos_token=eos, **case["kwargs"])
    return out[0]


M = [{"role": "system", "content": " sys "}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Yo", "tool_calls": [{"function": {"name": "f", "arguments": {"b": 1, "a": [1, 2.5]}}}]}]
SNIPPETS = [
    # loops
    ("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }}|{% endfor %}", {"xs": "abc"}),
    ("{% for x in xs if x > 1 %}{{ x }}:{{ loop.length }},{% else %}empty{% endfor %}", {"xs": [1, 2, 3]}),
    ("{% for x in xs %}{{ x }}{% else %}empty{% endfor %}", {"xs": []}),
    ("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("{% for k in d %}{{ k }}{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("{% for x in xs %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}", {"xs": [1, 2, 3, 4, 5]}),
    ("{% for x in xs %}{{ loop.previtem }}-{{ loop.nextitem }},{{ loop.cycle('a', 'b') }};{% endfor %}", {"xs": [1, 2, 3]}),
    ("{% set y = 1 %}{% for x in xs %}{% set y = x %}{% endfor %}{{ y }}", {"xs": [5, 6]}),
    ("{% set ns = namespace(y=1, z='q') %}{% for x in xs %}{% set ns.y = ns.y + x %}{% endfor %}{{ ns.y }}{{ ns.z }}", {"xs": [5, 6]}),
    ("{% for a, b in [[1, 2], [3, 4]] %}{{ a * b }},{% endfor %}", {}),
    ("{% for x in none_value %}{{ x }}{% endfor %}", {"none_value": None}),
    ("{% for x in undefined_value %}{{ x }}{% endfor %}done", {}),
    # whitespace control
    ("a  \n  {%- if true -%}  \n  b  \n  {%- endif -%}  \n  c", {}),
    ("line1\n    {% if true %}\n    inside\n    {% endif %}\nline2\n", {}),
    ("x {% if true %}y{% endif %} z\n{# comment #}\nw", {}),
    ("a\n  {%+ if true %}b{% endif %}\n", {}),
    ("{{ 'a' }}  {% if true %}b{% endif %}", {}),
    ("  {{- 'x' -}}  \n  {#- c -#}  y", {}),
    ("{% raw %}{{ not rendered }}{% endraw %}!", {}),
    ("trailing newline kept?\n\n", {}),
    # expressions
    ("{{ 1 + 2 * 3 - 4 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1.5 * 2 }} {{ 10 / 4 }}", {}),
    ("{{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' * 3 }} {{ [1] + [2] }} {{ 'x' + 'y' }}", {}),
    ("{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 'b' > 'a' }} {{ 1 == 1.0 }} {{ true == 1 }} {{ [1, 2] == [1, 2] }} {{ {'a': 1} == {'a': 1} }}", {}),
    ("{{ 'a' in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'cat' }} {{ not true }} {{ not 0 and 1 or 2 }}", {}),
    ("{{ 'yes' if x else 'no' }} {{ 'yes' if y else 'no' }} [{{ 'only' if y }}]", {"x": 1, "y": 0}),
    ("{{ s[1:3] }} {{ s[::-1] }} {{ s[-2:] }} {{ s[:-1] }} {{ xs[::2] }} {{ xs[-1] }} {{ xs[1:] }} {{ s[0] }} {{ xs[5] }}", {"s": "héllo", "xs": [1, 2, 3, 4]}),
    ("{{ d.a }} {{ d['b'] }} {{ d.missing }} {{ d.get('a') }} {{ d.get('zz', 'dflt') }} {{ d.get('zz') }} {{ d.keys() | list }} {{ d.values() | list }}", {"d": {"a": 1, "b": "two"}}),
    ("{{ [1, 'a', none, true, 1.5, {'k': [2]}] }} {{ {'q': \"it's\"} }} {{ 1e20 }} {{ 0.1 + 0.2 }} {{ 1.0 }} {{ 100000000000000000.0 }} {{ 0.00001 }}", {}),
    ("{{ x }}|{{ x is defined }}|{{ x is undefined }}|{{ x | default('d') }}|{{ '' | default('e', true) }}|{{ x | length }}", {}),
    ("{{ x.y }}", {}),
    ("{{ n.y }}|{{ n.y is defined }}", {"n": None}),
    ("{{ x + 1 }}", {}),
    ("{{ 'a' + 1 }}", {}),
    ("{{ 'abc' < 3 }}", {}),
    # string methods
    ("{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.strip(' x') }}|{{ s.upper() }}|{{ s.lower() }}|{{ s.title() }}|{{ s.capitalize() }}", {"s": " xhello World-wide x "}),
    ("{{ s.split() }} {{ s.split(',') }} {{ s.split(',', 1) }} {{ s.rsplit(',', 1) }} {{ s.startswith('a') }} {{ s.endswith(('z', 'c')) }} {{ s.replace(',', ';') }} {{ s.find('b') }} {{ s.count(',') }}", {"s": "a,b , c"}),
    ("{{ '-'.join(['a', 'b']) }} {{ 'ab\ncd'.splitlines() }} {{ '12'.isdigit() }} {{ 'ab'.isalpha() }}", {}),
    # filters
    ("{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ d | tojson(sort_keys=true) }}|{{ 'é\"<>&\n' | tojson }}|{{ [] | tojson(indent=2) }}", {"d": {"z": [1, 2.0, None, True], "a": {"k": "v"}}}),
    ("{{ d | tojson(separators=(',', ':')) }} {{ 'é' | tojson(ensure_ascii=true) }} {{ '😀' | tojson(ensure_ascii=true) }} {{ 3.14 | tojson }}", {"d": {"a": [1, 2]}}),
    ("{{ '  x  ' | trim }}|{{ 'xxaxx' | trim('x') }}|{{ [1, 2, 3] | length }}|{{ 'héllo' | length }}|{{ {'a': 1} | count }}", {}),
    ("{{ xs | join(', ') }}|{{ xs | first }}|{{ xs | last }}|{{ 'abc' | list }}|{{ 42 | string }}|{{ '42' | int + 1 }}|{{ 'x' | int }}|{{ 3.9 | int }}|{{ '2.5' | float }}", {"xs": ["a", "b", "c"]}),
    ("{{ 'Hello' | upper }}{{ 'Hello' | lower }}{{ 'hello world' | capitalize }}{{ 'hello world' | title }}{{ 'a-b' | replace('-', '+') }}{{ '<a & b>' | e }}{{ '<x>' | safe }}", {}),
    ("{{ M | selectattr('role', 'equalto', 'user') | list }}|{{ M | rejectattr('role', 'eq', 'user') | map(attribute='role') | list }}|{{ M | map(attribute='role') | join(',') }}|{{ M | selectattr('tool_calls') | list | length }}|{{ M | selectattr('tool_calls', 'defined') | list | length }}", {"M": M}),
    ("{{ [1, 0, 2, none] | select | list }}|{{ [1, 2, 3, 4] | reject('odd') | list }}|{{ ['a', 'B'] | map('upper') | list }}|{{ [3, 1, 2] | sort | list }}|{{ [1, 2, 1] | unique | list }}|{{ [1, 2] | reverse | list }}|{{ [1, 2, 3] | sum }}", {}),
    ("{{ d | items | list }}|{{ d | dictsort }}|{% for k, v in d | items %}{{ k }}{{ v }}{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("{{ s | indent }}|{{ s | indent(2, true) }}|{{ s | indent(2, blank=true) }}|{{ s | indent('> ') }}", {"s": "a\n\nb\n"}),
    ("{{ M | map(attribute='role') | tojson }}", {"M": M}),
    ("{% if M | selectattr('role', 'eq', 'nobody') %}gen-truthy{% endif %}", {"M": M}),
    ("{{ M[2].tool_calls[0].function.arguments | tojson }} {{ M[2]['tool_calls'][0]['function']['arguments'] }}", {"M": M}),
    # tests
    ("{{ x is none }}{{ x is string }}{{ 'a' is string }}{{ {} is mapping }}{{ [] is mapping }}{{ [] is iterable }}{{ 'a' is iterable }}{{ 1 is number }}{{ true is number }}{{ 1.5 is float }}{{ 1 is integer }}{{ true is boolean }}{{ [] is sequence }}", {"x": None}),
    ("{{ true is true }}{{ 1 is true }}{{ false is false }}{{ 2 is odd }}{{ 2 is even }}{{ 9 is divisibleby 3 }}{{ 'a' is in 'cat' }}{{ 1 is eq 1 }}{{ 1 is ne 2 }}{{ 'abc' is lower }}{{ x is not none }}", {"x": 0}),
    # set, macros, call, filter blocks
    ("{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c = [a, b] %}{{ c }}", {}),
    ("{% set block %}  inner {{ 1 + 1 }}  {% endset %}[{{ block }}]", {}),
    ("{% set block | upper %}shout{% endset %}{{ block }}", {}),
    ("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(name='C', punct='.') }}", {}),
    ("{% macro wrap() %}<{{ caller() }}>{% endmacro %}{% call wrap() %}body{% endcall %}", {}),
    ("{% filter upper %}quiet {{ 'words' }}{% endfilter %}", {}),
    ("{% generation %}kept{% endgeneration %}", {}),
    ("{{ raise_exception('refused: ' ~ 3) }}", {}),
    ("{{ strftime_now('%Y-%m-%d %d %b %Y %H:%M') }}", {}),
    ("{{ range(3) | list }} {{ range(1, 7, 2) | list }} {% for i in range(2) %}{{ i }}{% endfor %}", {}),
    ("{% set d = dict(a=1, b='x') %}{{ d }} {{ namespace(k=1).k }}", {}),
    ("{{ 'a' if 'b' in 'abc' and not ('d' in 'abc') else 'c' }}", {}),
    ("{{ \"str\" 'concat' }} {{ 'esc\\n\\t\\u00e9' }}", {}),
    ("{{ xs.append(1) }}", {"xs": []}),
    ("{{ foo( }}", {}),
    ("{% if x %}unclosed", {}),
    ("{{ 1 / 0 }}", {}),
    ("{% for x in 5 %}{% endfor %}", {}),
    ("{{ undefined_fn() }}", {}),
    ("{{ (1, 2) }}|{{ () }}|{{ [] }}|{{ {} }}|{{ none }}|{{ -3 | abs }}|{{ 2.567 | round(1) }}", {}),
    ("{{ ns }}|{% set ns = namespace() %}{{ ns.missing is defined }}", {}),
    ("a\u00a0 {%- if true -%}\u3000 b{% endif %}|x\n\u00a0 {% if true %}y{% endif %}", {}),
    # scoping
    ("{% set y = 1 %}{% for x in [5, 6] %}[{{ y }}]{% set y = x %}[{{ y }}]{% endfor %}{{ y }}", {}),
    ("{% macro m() %}{{ z }}{% endmacro %}{% set z = 3 %}{{ m() }}", {}),
    ("{% for x in [1] %}{% set q = 2 %}{% endfor %}{{ q is defined }}", {}),
    ("{% if true %}{% set w = 4 %}{% endif %}{{ w }}", {}),
    ("{% for a in [1, 2] %}{% for b in [3] %}{{ loop.index }}{{ a }}{{ b }}{% endfor %}{{ loop.index }}{% endfor %}", {}),
    ("{% set ns = namespace(l=[]) %}{% for x in [1, 2] %}{% set ns.l = ns.l + [x] %}{% endfor %}{{ ns.l }}", {}),
    ("{{ ('a', 'b') | join }} {{ 3 | string + 'x' }} {{ 10 ** -1 }} {{ 2 ** 0.5 }} {{ -2 ** 2 }}", {}),
    ("{{ 1 if none else 2 }}{{ none is none }}{{ [] | first is undefined }}{{ messages | length }}", {}),
    ("a{% break %}b", {}),
    ("{% for x in [1, 2] %}{% macro m() %}{% break %}{% endmacro %}{{ x }}{% endfor %}", {}),
    ("{% if true %}{% continue %}{% endif %}x", {}),
    ("{% for x in [1, 2, 3] %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% else %}none{% endfor %}", {}),
]


def snippets():
    out = []
    for src, ctx in SNIPPETS:
        src = src.replace("\\n", "\n")
        rec = {"template": src, "context": ctx}
        try:
            rec["output"] = ctu._compile_jinja_template(src).render(**ctx)
        except Exception as e:  # noqa: BLE001 - jinja2 and Python errors alike
            rec["error"] = type(e).__name__ + ": " + str(e)
        out.append(json.dumps(rec, ensure_ascii=False))
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    templates = {}  # name -> (source, bos, eos, origin)
    for d in sys.argv[1:]:
        for path in sorted(glob.glob(os.path.join(d, "*.jinja"))):
            name = os.path.basename(path)[:-len(".jinja")]
            with open(path, encoding="utf-8", newline="") as f:
                templates[name] = (f.read(), "<s>", "</s>", "llama.cpp models/templates/" + os.path.basename(path))
    for cfg in sorted(glob.glob(os.path.join(ROOT, "tests", "data", "tokenizer", "*", "tokenizer_config.json"))):
        with open(cfg, encoding="utf-8") as f:
            c = json.load(f)
        if not isinstance(c.get("chat_template"), str):
            continue
        tok = lambda k: c.get(k) if isinstance(c.get(k), str) else (c.get(k) or {}).get("content", "")
        d = os.path.basename(os.path.dirname(cfg))
        templates["tokenizer-" + d] = (c["chat_template"], tok("bos_token") or "", tok("eos_token") or "",
                                      "tests/data/tokenizer/" + d + "/tokenizer_config.json")

    os.makedirs(os.path.join(OUT, "templates"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "expected"), exist_ok=True)
    all_cases = list(cases())
    with open(os.path.join(OUT, "conversations.json"), "w", encoding="utf-8") as f:
        json.dump({"fixed_now": FIXED_NOW.isoformat(), "tools": TOOLS, "conversations": CONVERSATIONS,
                   "cases": all_cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    index = []
    n_out = n_err = 0
    for name, (src, bos, eos, origin) in sorted(templates.items()):
        with open(os.path.join(OUT, "templates", name + ".jinja"), "w", encoding="utf-8", newline="") as f:
            f.write(src)
        lines = []
        for i, case in enumerate(all_cases):
            rec = {"case": i}
            try:
                rec["output"] = render(src, bos, eos, case)
                n_out += 1
            except jinja2.exceptions.TemplateError as e:
                # raise_exception() raises TemplateError itself; jinja2's own
                # failures are subclasses (UndefinedError, TemplateSyntaxError...)
                rec["error"] = str(e)
                rec["raised"] = type(e) is jinja2.exceptions.TemplateError
                n_err += 1
            except Exception as e:  # noqa: BLE001 - a Python error inside the template (TypeError, ...)
                rec["error"] = type(e).__name__ + ": " + str(e)
                rec["raised"] = False
                n_err += 1
            lines.append(json.dumps(rec, ensure_ascii=False))
        with open(os.path.join(OUT, "expected", name + ".jsonl"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        index.append({"name": name, "bos_token": bos, "eos_token": eos, "source": origin})
    with open(os.path.join(OUT, "index.json"), "w", encoding="utf-8") as f:
        json.dump({"jinja2": jinja2.__version__, "transformers": transformers.__version__, "templates": index},
                  f, ensure_ascii=False, indent=1)
        f.write("\n")
    sn = snippets()
    with open(os.path.join(OUT, "snippets.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(sn) + "\n")
    print(f"{len(sn)} snippets")
    print(f"{len(templates)} templates x {len(all_cases)} cases: {n_out} rendered, {n_err} refused")


if __name__ == "__main__":
    main()
