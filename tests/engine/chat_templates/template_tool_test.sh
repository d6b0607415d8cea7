#!/usr/bin/env bash
# airlock-template (tools/airlock_template.cpp) through the real binary: each
# kind of SOURCE (GGUF, tokenizer_config.json, template file), its exit
# codes, and --dump; then compare_template.py against jinja2 on the real
# Llama 3 and Qwen3 templates in ../shared/models (that part is skipped,
# saying so, when the models or python3-jinja2 are absent).
# usage: template_tool_test.sh AIRLOCK_TEMPLATE AIRLOCK_GEN_MODEL MODELS_DIR
set -uo pipefail
tool=$1 gen=$2 models=$3
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# expect EXIT_CODE EXPECTED_STDOUT COMMAND...: stdout compared byte for byte
expect() {
  local want_rc=$1 want_out=$2
  shift 2
  local out rc
  out=$("$@" 2>"$work/err"; echo "x$?")
  rc=${out##*x}
  out=${out%x*}
  [ "$rc" = "$want_rc" ] || fail "$* exited $rc, want $want_rc ($(cat "$work/err"))"
  [ "$out" = "$want_out" ] || fail "$* printed '$out', want '$want_out'"
}

tpl='{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}{% if tools %}({{ tools | length }} tools){% endif %}'
printf '%s' "$tpl" > "$work/t.jinja"
printf '%s' '{"messages": [{"role": "user", "content": "hi"}]}' > "$work/v.json"

# A GGUF: its template, and BOS/EOS as its vocabulary spells them.
"$gen" "$work/m.gguf" --embd 64 --layers 1 --ff 64 --heads 2 --kv-heads 1 --chat-template "$work/t.jinja" >/dev/null ||
  fail "airlock-gen-model --chat-template"
expect 0 '<s>[user]hi</s>[assistant]' "$tool" "$work/m.gguf" "$work/v.json"
# A GGUF without a template is refused, naming the key.
"$gen" "$work/plain.gguf" --embd 64 --layers 1 --ff 64 --heads 2 --kv-heads 1 >/dev/null
expect 2 '' "$tool" "$work/plain.gguf" "$work/v.json"
grep -q 'tokenizer.chat_template' "$work/err" || fail "no template: '$(cat "$work/err")'"

# tokenizer_config.json: special tokens as strings or as {"content": ...};
# other variables reach the template; add_generation_prompt false.
python3 -c 'import json,sys; json.dump({"chat_template": sys.argv[1], "bos_token": {"content": "<B>", "lstrip": False}, "eos_token": "<E>"}, open(sys.argv[2], "w"))' \
  "$tpl" "$work/tokenizer_config.json"
printf '%s' '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "add_generation_prompt": false, "tools": [{"type": "function"}, {"type": "function"}]}' > "$work/v2.json"
expect 0 '<B>[user]a<E>[assistant]b<E>(2 tools)' "$tool" "$work/tokenizer_config.json" "$work/v2.json"
# A template file, VARS from stdin, BOS/EOS from VARS.
printf '%s' '{"messages": [{"role": "user", "content": "q"}], "bos_token": "^", "eos_token": "$"}' > "$work/v3.json"
expect 0 '^[user]q$[assistant]' bash -c '"$1" "$2" < "$3"' _ "$tool" "$work/t.jinja" "$work/v3.json"

# --dump: what was read, as JSON.
"$tool" "$work/m.gguf" --dump > "$work/dump.json" || fail "--dump exited $?"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if (d["chat_template"], d["bos_token"], d["eos_token"]) == (sys.argv[2], "<s>", "</s>") else 1)' \
  "$work/dump.json" "$tpl" || fail "--dump printed $(cat "$work/dump.json")"

# raise_exception(): exit 1, the template's own message on stderr.
printf '%s' "{{ raise_exception('Roles must alternate!') }}" > "$work/raise.jinja"
expect 1 '' "$tool" "$work/raise.jinja" "$work/v.json"
grep -qx 'airlock-template: Roles must alternate!' "$work/err" || fail "raise: '$(cat "$work/err")'"
# A template the interpreter cannot parse: exit 1 with the place.
printf '%s' '{% for %}' > "$work/broken.jinja"
expect 1 '' "$tool" "$work/broken.jinja" "$work/v.json"
grep -q 'line 1' "$work/err" || fail "broken: '$(cat "$work/err")'"
# Bad input: exit 2.
printf '%s' '{"messages": "not a list"}' > "$work/bad.json"
expect 2 '' "$tool" "$work/t.jinja" "$work/bad.json"
printf '%s' '{"messages": [], "add_generation_prompt": "yes"}' > "$work/bad2.json"
expect 2 '' "$tool" "$work/t.jinja" "$work/bad2.json"
expect 2 '' "$tool" "$work/missing.jinja" "$work/v.json"
expect 2 '' "$tool"
# Sources that hold no template are refused, not rendered as text (which
# would pass any comparison): a directory, a tokenizer_config.json without
# chat_template, broken JSON named .json, an empty file.
expect 2 '' "$tool" "$work" "$work/v.json"
printf '%s' '{"bos_token": "<s>"}' > "$work/no_template.json"
expect 2 '' "$tool" "$work/no_template.json" "$work/v.json"
grep -q 'has no chat_template' "$work/err" || fail "no chat_template: '$(cat "$work/err")'"
printf '%s' '{"chat_template": ' > "$work/broken.json"
expect 2 '' "$tool" "$work/broken.json" "$work/v.json"
: > "$work/empty.jinja"
expect 2 '' "$tool" "$work/empty.jinja" "$work/v.json"
# --now takes whole seconds only.
expect 2 '' "$tool" "$work/t.jinja" "$work/v.json" --now abc
expect 2 '' "$tool" "$work/t.jinja" "$work/v.json" --now -5
# Hostile nesting (JSON copies recurse): refused with exit 2, no crash.
python3 -c 'import sys; d = 200000; open(sys.argv[1], "w").write("{\"messages\": [{\"role\": \"user\", \"content\": \"x\", \"name\": " + "[" * d + "]" * d + "}]}")' "$work/deep.json"
expect 2 '' "$tool" "$work/t.jinja" "$work/deep.json"
grep -q 'nested deeper than' "$work/err" || fail "deep: '$(cat "$work/err")'"

# Against jinja2, on the real templates. Without them the test reports
# itself skipped (exit 77), after the checks above.
skipped=""
if [ ! -f "$models/tokenizers/llama3/tokenizer_config.json" ]; then
  skipped="the jinja2 comparison ($models/tokenizers not found)"
elif ! python3 -c 'import jinja2' 2>/dev/null; then
  skipped="the jinja2 comparison (python3-jinja2 not installed: scripts/setup installs it)"
else
  python3 "$here/compare_template.py" --tool "$tool" "$models/tokenizers/llama3/tokenizer_config.json" \
    "$models/tokenizers/qwen3/tokenizer_config.json" || fail "compare_template.py found differences"
fi

if [ "$failures" -ne 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
if [ -n "$skipped" ]; then
  echo "SKIPPED: $skipped; the other checks passed"
  exit 77
fi
echo "OK: airlock-template"
