#!/usr/bin/env python3
"""Generates the expected renders of the real chat templates in this folder.

Renders every template (TEMPLATES) with every conversation in cases.json using
Python's jinja2 configured exactly as Hugging Face transformers'
apply_chat_template() configures it (transformers/utils/chat_template_utils.py:
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the
loopcontrols extension, a json.dumps-based `tojson` filter and the globals
raise_exception / strftime_now; the variables messages, tools, documents,
add_generation_prompt and the special tokens). strftime_now uses the fixed
time in cases.json so that the output is reproducible; the C++ test injects
the same time.

Writes expected/<template>__<case>.txt (the render, byte for byte) or
expected/<template>__<case>.error (first line "raise" or "error", then the
message), and expected/manifest.json listing them all. The C++ test
(tests/engine/chat_template_test.cpp) reads only these files.

Usage: python3 make_expected.py   (needs jinja2 >= 3.1; apt install python3-jinja2)
"""
import datetime
import json
import os
import sys

import jinja2
import jinja2.ext
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (file, bos_token, eos_token, provenance). The template text is
# read from the model files in ../shared/models at generation and at test
# time; it is not copied into this repository.
MODELS = os.environ.get("AIRLOCK_MODELS_DIR", os.path.join(HERE, "..", "..", "..", "..", "shared", "models"))
TEMPLATES = {
    "llama-3": ("tokenizers/llama3/tokenizer_config.json", "<|begin_of_text|>", "<|eot_id|>",
                "meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json (shared/models/tokenizers/llama3)"),
    "qwen3": ("tokenizers/qwen3/tokenizer_config.json", "", "<|im_end|>",
              "Qwen3 tokenizer_config.json (shared/models/tokenizers/qwen3)"),
}


# Small templates that pin down one behaviour each; rendered with the same
# environment into expected/snippets.json. (template, variables)
SNIPPETS = [
    # whitespace control: trim_blocks, lstrip_blocks, -, +
    ("  {% if true %}\n  x\n  {% endif %}\n  {# c #}\nend\n", {}),
    ("{%- for x in [1] -%} a {%+ if true %} b {% endif +%}\nc{% endfor %}", {}),
    ("a  {%- if true -%}  \n\n b {{- ' c ' -}}  d {% endif %}", {}),
    ("line\n    {% if true %}kept {{ 'x' }}\n    {%- endif %}\n", {}),
    ("{{ 'a' }}\n{{ 'b' }}\n\n", {}),
    ("x\r\ny\rz\n\n", {}),
    ("{% if true %}\u3000\u00a0{% endif %}|  \t{% if true %}{% endif %}|", {}),
    ("{# comment -#}   \n{#- c2 #}\nafter", {}),
    ("{{ {'a': {'b': 1}} }}", {}),
    ("{% set x = '%}' %}{{ x }}{{ '}}' }}", {}),
    # literals and escapes
    ("{{ '\\u00e9\\x41\\q\\n\\t\\\\' }}|{{ \"it's\" }}|{{ 'a' 'b' }}", {}),
    ("{{ '\\101\\0' | length }}{{ '\\N' if false else 'n' }}", {}),
    ("{{ 1_000 }} {{ 1.5e3 }} {{ 2e-7 }} {{ 0.1 + 0.2 }} {{ 1e16 }} {{ 123456789012345.6 }} {{ -0.0 }}", {}),
    ("{{ [1, 'a', none, true, 1.5, {'k': \"it's\"}, ('t',), (1, 2)] }}", {}),
    ("{{ {'b': 1, 'a': [1.0, 'é\"\\n', none, true]} | tojson }}", {}),
    ("{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(sort_keys=true) }}|{{ x | tojson(ensure_ascii=true) }}",
     {"x": {"z": [1, {"y": []}, {}], "a": "ü😀\u0001", "f": 2.50}}),
    ("{{ x | tojson(separators=(',', ':')) }}", {"x": {"a": [1, 2]}}),
    ("{{ None }}|{{ True }}|{{ false }}|{{ none is none }}", {}),
    # arithmetic
    ("{{ 10/4 }} {{ 7//2 }} {{ -7//2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2**10 }} {{ 2**-1 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }}", {}),
    ("{{ 1 + 2 * 3 - 4 }} {{ (1 + 2) * 3 }} {{ 'ab' * 3 }} {{ 3 * [0] }} {{ [1] + [2] }} {{ 1 ~ 2 ~ none }}", {}),
    ("{{ -3 | abs }} {{ - 2 ** 2 }} {{ 2 ** 3 ** 2 }} {{ 1 + true }}", {}),
    ("{{ 1 == 1.0 }} {{ 1 == true }} {{ 'a' < 'b' < 'c' }} {{ [1, 2] < [1, 3] }} {{ 1 != 2 > 1 }}", {}),
    ("{{ 'x' in {'x': 1} }} {{ 'ell' in 'hello' }} {{ 2 in [1, 2] }} {{ 3 not in [1, 2] }} {{ 'a' in u }}", {}),
    ("{{ 1 if false }}|{{ 'y' if true else 'n' }}|{{ 0 or 'b' }}|{{ 1 and 2 }}|{{ '' and x }}|{{ not 0 }}", {}),
    ("{{ 1 + 'a' }}", {}),
    ("{{ 3 / 0 }}", {}),
    ("{{ 'a' - 1 }}", {}),
    ("{{ [1] < 'a' }}", {}),
    ("{{ 1 in 'abc' }}", {}),
    # undefined
    ("[{{ u }}][{{ u is defined }}][{{ u | length }}][{{ u | trim }}][{{ u ~ 'a' }}][{{ not u }}]", {}),
    ("{% for x in u %}x{% else %}empty{% endfor %}{{ u == u }}{{ u is iterable }}{{ u | default('d') }}", {}),
    ("{{ u.a }}", {}),
    ("{{ u['a'] }}", {}),
    ("{{ u + 1 }}", {}),
    ("{{ -u }}", {}),
    ("{{ u() }}", {}),
    ("{{ m.x }}|{{ m.x is defined }}|{{ m['x'] is defined }}|{{ m.x | default('d') }}", {"m": {}}),
    ("{{ m.x.y }}", {"m": {}}),
    ("{{ 'abc'.content is defined }}|{{ none.x is defined }}|{{ [1].x is defined }}|{{ (1).x is defined }}", {}),
    ("{{ messages[0]['role'] }}", {"messages": []}),
    ("{{ messages[5] is defined }}|{{ messages[-1].role }}|{{ messages[0].get('x', 'dflt') }}",
     {"messages": [{"role": "user"}]}),
    ("{{ x['items'] }}|{{ x.keys() | list }}", {"x": {"items": 1}}),
    # scoping
    ("{% for i in [1,2,3] %}[{{ x }}]{% set x = i %}{% endfor %}[{{ x }}]", {}),
    ("{% set x = 5 %}{% for i in [1,2] %}[{{ x }}]{% set x = i %}[{{ x }}]{% endfor %}[{{ x }}]", {}),
    ("{% if true %}{% set y = 3 %}{% endif %}{{ y }}", {}),
    ("{% set ns = namespace(a=1, b='x') %}{% for i in [1,2,3] %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}{{ ns.b }}{{ ns.c is defined }}", {}),
    ("{% set ns = namespace() %}{% set ns.found = false %}{% for m in ms if m == 2 %}{% set ns.found = true %}{% endfor %}{{ ns.found }}", {"ms": [1, 2]}),
    ("{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t = (3, 4) %}{% set c, d = t %}{{ c + d }}", {}),
    ("{% set x %}block {{ 1 + 1 }}{% endset %}[{{ x }}]", {}),
    ("{% set messages = messages[1:] %}{{ messages | length }}", {"messages": [1, 2, 3]}),
    ("{{ x }}{% set x = 2 %}{{ x }}", {"x": 1}),
    ("{% set x = 1 %}{% macro f() %}{{ x }}{% endmacro %}{% for x in [9] %}{{ f() }}{% endfor %}", {}),
    # loops
    ("{% for i in [1,2,3] if i > 1 %}{{ loop.index }}/{{ loop.length }}{{ loop.first }}{{ loop.last }}{{ loop.revindex }},{% else %}E{% endfor %}", {}),
    ("{% for i in 'abc' %}{{ loop.index0 }}{{ i }}{{ loop.previtem | default('-') }}{{ loop.nextitem | default('-') }}{{ loop.cycle('x', 'y') }} {% endfor %}", {}),
    ("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}{% for k, v in d | items %}{{ v }}{% endfor %}",
     {"d": {"z": 1, "a": 2}}),
    ("{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    ("{% for a in [1, 2] %}{% for b in [3, 4] %}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{{ loop.index }}|{% endfor %}", {}),
    ("{% for x in [] %}{{ x }}{% else %}none{% endfor %}{% for x in [1] if false %}{% else %}filtered{% endfor %}", {}),
    ("{{ range(3) | list }}{{ range(1, 10, 3) | list }}{{ range(5, 0, -2) | list }}", {}),
    ("{% for x in 5 %}{% endfor %}", {}),
    ("{% for a, b in [[1, 2], [3]] %}{{ a }}{% endfor %}", {}),
    # slicing and indexing
    ("{{ [1,2,3][::-1] }} {{ 'héllo'[1:3] }} {{ 'héllo' | length }} {{ 'héllo'[-1] }} {{ [1,2,3,4,5][1:-1:2] }} {{ 'abc'[5:] }}|{{ 'abcdef'[::-2] }}", {}),
    ("{{ [1,2,3][-10:10] }} {{ 'abc'[10] is defined }} {{ [1,2][true] }} {{ x[0] }}{{ x.0 }}", {"x": ["first"]}),
    ("{{ [1, 2][::0] }}", {}),
    # filters
    ("{{ '  a b  ' | trim }}|{{ 'xxaxx' | trim('x') }}|{{ 'Hello' | upper }}{{ 'HeLLo' | lower }}|{{ 'hello wORLD' | capitalize }}|{{ 'hello wORLD-x y' | title }}", {}),
    # the title filter is not str.title(): words start after white space and -({[< only, with an upper-cased first character
    ("{{ \"o'neil mc-donald\" | title }}|{{ 'x1y 2z' | title }}|{{ 'a-b c_d' | title }}|{{ \"o'neil x1y\".title() }}|{{ 'ǆemal ßtraße (foo[bar{baz<qux x\u2003y ΣΑΣ' | title }}", {}),
    ("{{ [1, 2, 3] | first }}{{ [1, 2, 3] | last }}{{ 'abc' | first }}{{ [] | first is defined }}", {}),
    ("{{ [1, 'a', none] | join(', ') }}|{{ users | join(', ', attribute='name') }}|{{ 'abc' | join('-') }}",
     {"users": [{"name": "a"}, {"name": "b"}]}),
    ("{{ 'aaa' | replace('a', 'b', 2) }}|{{ 'abc' | replace('', '-') }}|{{ 'abc'.replace('b', 'XX') }}", {}),
    ("{{ 42 | string }}{{ [1] | string }}{{ '3' | int + 1 }}{{ '3.7' | int }}{{ 'x' | int }}{{ 'x' | int(7) }}{{ 4.9 | int }}{{ '2.5' | float }}{{ true | int }}", {}),
    ("{{ x | items | list }}|{{ 'ab' | list }}|{{ x | list }}|{{ u | items | list }}", {"x": {"a": 1, "b": [2]}}),
    ("{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }}|{{ ms | rejectattr('role', 'eq', 'user') | list | length }}|{{ ms | selectattr('tool') | list | length }}",
     {"ms": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "tool": 1}, {"role": "user", "content": "c"}]}),
    ("{{ [1, 2, 3, 4] | select('odd') | list }}{{ [1, 2, 3, 4] | reject('even') | list }}{{ [0, 1, '', 'a'] | select | list }}{{ ['a', 'B'] | map('upper') | list }}", {}),
    ("{{ 2.5 | round }} {{ 3.14159 | round(2) }} {{ 2.7 | round(0, 'floor') }} {{ -2.5 | round }} {{ 1 | round }}", {}),
    ("{{ 2.675 | round(2) }} {{ 0.125 | round(2) }} {{ 1234.5 | round(-2) }} {{ 3.5 | round }} {{ 2.71 | round(1, 'ceil') }}", {}),
    ("{{ 'x' | safe }}{{ none | default('d', true) }}{{ 0 | default('d') }}{{ 0 | d('d', true) }}{{ '' | default('e', boolean=true) }}", {}),
    ("{{ ['b', 'A', 'c'] | sort }}{{ ['b', 'A', 'c'] | sort(case_sensitive=true) }}{{ [3, 1, 2] | sort(reverse=true) }}{{ ['a', 'A', 'b'] | unique | list }}", {}),
    ("{{ [3, 1, 2] | min }}{{ [3, 1, 2] | max }}{{ [1, 2, 3] | sum }}{{ ms | sort(attribute='n') | map(attribute='n') | list }}{{ {'b': 1, 'a': 2} | dictsort }}",
     {"ms": [{"n": 2}, {"n": 1}]}),
    # reverse=true keeps equal keys in their order, as Python's sorted()
    ("{{ [{'k': 1, 'v': 'a'}, {'k': 1, 'v': 'b'}, {'k': 0, 'v': 'c'}] | sort(attribute='k', reverse=true) | map(attribute='v') | join }}|{{ ['B', 'a', 'b', 'A'] | sort(reverse=true) }}|{{ ['B', 'a', 'b', 'A'] | sort(reverse=true, case_sensitive=true) }}|{{ {'b': 1, 'A': 2, 'a': 3, 'B': 0} | dictsort(reverse=true) }}|{{ {'x': 1, 'y': 2, 'z': 1} | dictsort(by='value', reverse=true) }}", {}),
    ("{{ 'a\nb\n\nc' | indent(2) }}|{{ 'a\nb' | indent(2, true) }}|{{ 'a\n\nb' | indent(width='> ', blank=true) }}", {}),
    ("{{ [1, 2] | reverse | list }}{{ 'abc' | reverse }}{{ 'a<b>&\"\\'' | e }}{{ [1, 2] | count }}", {}),
    ("{{ 1 | nosuchfilter }}", {}),
    ("{{ 1 | length }}", {}),
    ("{{ 1 | items | list }}", {}),
    ("{{ u | tojson }}", {}),
    # tests
    ("{{ 1 is number }}{{ true is number }}{{ 1 is integer }}{{ 1.0 is float }}{{ 'a' is string }}{{ {} is mapping }}{{ [] is mapping }}{{ [] is iterable }}{{ 'a' is sequence }}{{ {} is sequence }}", {}),
    ("{{ none is none }}{{ true is true }}{{ 1 is true }}{{ false is false }}{{ true is boolean }}{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 9 is divisibleby(4) }}", {}),
    ("{{ 'a' is equalto 'a' }}{{ 1 is eq 2 }}{{ 2 is gt 1 }}{{ 1 is lt(0) }}{{ 1 is in [1] }}{{ 'abc' is lower }}{{ 'ABC' is upper }}{{ x is not defined }}{{ range is callable }}", {}),
    ("{{ 1 is nosuchtest }}", {}),
    # methods
    ("{{ '  x  '.strip() }}|{{ '--x--'.lstrip('-') }}|{{ 'x\n\n'.rstrip('\n') }}|{{ 'a b  c'.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a,b,c'.split(',', 1) }}|{{ 'a,b,c'.rsplit(',', 1) }}", {}),
    # split(None, n): the rest keeps its white space on the far side
    ("{{ '  a  b  '.split(none, 1) }}|{{ '  a  b  '.rsplit(none, 1) }}|{{ '  a  b  '.split(none, 0) }}|{{ '  a  b  '.rsplit(none, 0) }}|{{ '  a  b  c '.split(none, 2) }}|{{ ' a b  '.rsplit(none, 1) }}|{{ 'a  '.split(none, 1) }}|{{ '  '.split(none, 0) }}", {}),
    ("{{ 'hello'.startswith('he') }}{{ 'hello'.endswith(('x', 'lo')) }}{{ 'Hello'.upper() }}{{ 'Hello'.lower() }}{{ 'hello world'.title() }}{{ 'hello'.find('l') }}{{ 'héllo'.find('l') }}{{ 'hello'.count('l') }}{{ ', '.join(['a', 'b']) }}", {}),
    ("{{ c.split('</think>')[-1].lstrip('\\n') }}|{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}",
     {"c": "<think>\nreason\n</think>\n\nanswer"}),
    ("{{ d.get('a') }}{{ d.get('zz') }}{{ d.get('zz', 5) }}{{ d.values() | list }}{{ d.keys() | list }}{{ d.items() | list }}", {"d": {"a": 1}}),
    ("{{ 'abc'.nosuchmethod() }}", {}),
    ("{{ ''.split('') }}", {}),
    # macros
    ("{% macro f(a, b=2) %}[{{ a }}{{ b }}{{ g }}]{% endmacro %}{% set g = 9 %}{{ f(1) }}{{ f(1, b=3) }}{{ f() }}", {}),
    ("{% macro render(v) %}{% if v is mapping %}{% for k in v %}{{ k }}:{{ render(v[k]) }};{% endfor %}{% else %}{{ v }}{% endif %}{% endmacro %}{{ render(x) }}",
     {"x": {"a": {"b": 1}, "c": 2}}),
    ("{% macro f(a) %}{{ a }}{% endmacro %}{{ f(1, 2) }}", {}),
    ("{% macro f(a) %}{{ a }}{% endmacro %}{{ f(1) ~ '!' }}{{ f(z=1) }}", {}),
    # globals and errors
    ("{{ raise_exception('Bad \"thing\": ' ~ 42) }}", {}),
    ("before{% if true %}{{ raise_exception('stop here') }}{% endif %}", {}),
    ("{{ strftime_now('%d %b %Y') }}|{{ strftime_now is defined }}|{{ tools is none }}|{{ documents is defined }}", {}),
    ("{{ dict(a=1, b=2) | tojson }}{{ namespace is defined }}", {}),
    ("{{ messages }}", {"messages": [{"role": "user", "content": "it's \"q\" \\ é\u200b\u0007"}]}),
    ("{{ x }}|{{ x | string }}|{{ x ~ '' }}", {"x": 1.0}),
    ("{{ [1.5, 2.0, 1e20, 1e-10, 100.0] }}", {}),
    ("{{ 2 ** 62 - 1 + 2 ** 62 }}", {}),
    # integers at the edges of int64 (beyond them this engine fails where
    # Python goes on exactly: chat_template_test.cpp, IntegersBeyond64Bits...)
    ("{{ 9223372036854775807 }}|{{ -9223372036854775807 - 1 }}|{{ 9223372036854775806 + 1 }}|{{ (-2) ** 63 }}|"
     "{{ 3 ** 39 }}|{{ (-9223372036854775807 - 1) % -1 }}|{{ (-9223372036854775807 - 1) // 1 }}|{{ -(-9223372036854775807) }}", {}),
    ("{{ '9223372036854775807' | int }}|{{ '-9223372036854775808' | int }}|{{ -9223372036854775808.0 | int }}|"
     "{{ 9.21e18 | int }}|{{ '1e400' | int }}|{{ 'inf' | int(7) }}|{{ (1e308 * 10 - 1e308 * 10) | int }}|{{ x | tojson }}",
     {"x": [9223372036854775807, -9223372036854775808]}),
    ("{{ 2 ** -1 }}|{{ (-8) ** -1 }}|{{ 0 ** 0 }}|{{ 1e308 * 10 }}|{{ 10 ** -400 }}", {}),
    ("{{ 0 ** -1 }}", {}),
    ("{{ 0.0 ** -1.5 }}", {}),
    ("{{ 10.0 ** 400 }}", {}),
    ("{{ 'a' ~ 1.5 ~ true ~ none ~ [1] }}", {}),
    ("{{ '%s' % 1 if false else 'no fmt' }}", {}),
]


def render_snippets(env):
    out = []
    for source, variables in SNIPPETS:
        entry = {"template": source, "vars": variables}
        try:
            entry["kind"], entry["output"] = "text", env.from_string(source).render(**dict({"tools": None, "documents": None}, **variables))
        except TemplateError as e:
            is_raise = type(e) is TemplateError
            entry["kind"] = "raise" if is_raise else "error"
            entry["message"] = e.message if is_raise else f"{type(e).__name__}: {e}"
        except Exception as e:
            entry["kind"], entry["message"] = "error", f"{type(e).__name__}: {e}"
        out.append(entry)
    return out


def make_env(now_unix_s):
    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.datetime.fromtimestamp(now_unix_s).strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def case_variables(spec, case, bos, eos):
    """The variables apply_chat_template() passes for one case of cases.json."""
    variables = {
        "messages": case["messages"],
        "tools": spec["tools"] if case.get("use_tools") else None,
        "documents": None,
        "add_generation_prompt": case["add_generation_prompt"],
        "bos_token": bos,
        "eos_token": eos,
    }
    variables.update(case.get("extra", {}))
    return variables


def render_case(template, variables):
    """("text", the render), ("raise", raise_exception's message), or
    ("error", "ExceptionType: message") for any other failure."""
    try:
        return "text", template.render(**variables)
    except TemplateError as e:
        if type(e) is TemplateError:  # raise_exception()
            return "raise", e.message
        return "error", f"{type(e).__name__}: {e}"
    except Exception as e:  # TypeError and the like: any failure is an error render
        return "error", f"{type(e).__name__}: {e}"


def main():
    with open(os.path.join(HERE, "cases.json"), encoding="utf-8") as f:
        spec = json.load(f)
    env = make_env(spec["now_unix_s"])
    out_dir = os.path.join(HERE, "expected")
    os.makedirs(out_dir, exist_ok=True)
    manifest = {"jinja2_version": jinja2.__version__, "templates": {}, "renders": []}
    for name, (file, bos, eos, provenance) in TEMPLATES.items():
        manifest["templates"][name] = {"model_file": file, "bos_token": bos, "eos_token": eos, "provenance": provenance}
        with open(os.path.join(MODELS, file), encoding="utf-8") as f:
            template = env.from_string(json.load(f)["chat_template"])
        for case in spec["cases"]:
            variables = case_variables(spec, case, bos, eos)
            base = f"{name}__{case['name']}"
            kind, result = render_case(template, variables)
            out_name = base + (".txt" if kind == "text" else ".error")
            payload = result if kind == "text" else f"{kind}\n{result}"
            with open(os.path.join(out_dir, out_name), "w", encoding="utf-8", newline="") as f:
                f.write(payload)
            manifest["renders"].append({"template": name, "case": case["name"], "kind": kind, "file": out_name})
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1)
        f.write("\n")
    snippets = render_snippets(env)
    with open(os.path.join(out_dir, "snippets.json"), "w", encoding="utf-8") as f:
        json.dump(snippets, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{len(snippets)} snippets", file=sys.stderr)
    counts = {}
    for r in manifest["renders"]:
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    print(f"{len(manifest['renders'])} renders: {counts}", file=sys.stderr)


if __name__ == "__main__":
    main()
