#!/usr/bin/env python3
"""Compares airlockd's rendering of a chat template with Python jinja2's.

For a model whose template is not in ../shared/models (Mistral, Gemma, or any
GGUF an operator is about to bundle): renders every conversation in
cases.json with the template through build/tools/airlock-template (the
daemon's renderer) and through jinja2 configured as Hugging Face's
apply_chat_template (make_expected.make_env), and reports each case as the
same or different. A template error counts as the same when both raise the
same raise_exception() message, or both fail otherwise.

Usage: compare_template.py [--tool PATH] SOURCE [SOURCE ...]
  SOURCE: a GGUF file, a tokenizer_config.json, or a template file (as
  airlock-template takes them). Exit status 0 when every case of every
  SOURCE is the same, 1 otherwise.

Needs python3-jinja2 (apt install python3-jinja2); the template text is read
through the tool, so nothing is copied into this repository.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_expected  # noqa: E402  (the jinja2 environment the expected renders use)


def airlock_render(tool, source, variables, now):
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8", delete=False) as f:
        json.dump(variables, f, ensure_ascii=False)
        vars_path = f.name
    try:
        p = subprocess.run([tool, source, vars_path, "--now", str(now)], capture_output=True)
    finally:
        os.unlink(vars_path)
    if p.returncode == 0:
        return "text", p.stdout.decode("utf-8", errors="replace")
    message = p.stderr.decode("utf-8", errors="replace").removeprefix("airlock-template: ").rstrip("\n")
    if p.returncode == 1:
        return "failed", message
    raise SystemExit(f"airlock-template could not run on {source}: {message}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tool", default=os.path.join(HERE, "..", "..", "..", "build", "tools", "airlock-template"))
    ap.add_argument("sources", nargs="+")
    args = ap.parse_args()
    with open(os.path.join(HERE, "cases.json"), encoding="utf-8") as f:
        spec = json.load(f)
    env = make_expected.make_env(spec["now_unix_s"])
    differ = 0
    for source in args.sources:
        dumped = subprocess.run([args.tool, source, "--dump"], capture_output=True)
        if dumped.returncode != 0:
            raise SystemExit(dumped.stderr.decode("utf-8", errors="replace").rstrip())
        src = json.loads(dumped.stdout)
        try:
            template = env.from_string(src["chat_template"])
        except Exception as e:  # a template jinja2 cannot parse: every case is an error render
            template, parse_error = None, f"{type(e).__name__}: {e}"
        same = 0
        for case in spec["cases"]:
            variables = make_expected.case_variables(spec, case, src["bos_token"], src["eos_token"])
            want_kind, want = make_expected.render_case(template, variables) if template else ("error", parse_error)
            got_kind, got = airlock_render(args.tool, source, variables, spec["now_unix_s"])
            if want_kind == "text":
                ok = got_kind == "text" and got == want
            elif want_kind == "raise":
                ok = got_kind == "failed" and got == want
            else:
                ok = got_kind == "failed"
            if ok:
                same += 1
                continue
            differ += 1
            print(f"DIFFERENT {source} / {case['name']}\n  jinja2 ({want_kind}): {want!r}\n  airlock ({got_kind}): {got!r}")
        print(f"{source}: {same} of {len(spec['cases'])} cases the same")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
