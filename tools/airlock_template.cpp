// airlock-template: renders a chat template the way airlockd does, so that a
// model's template can be checked before it is bundled (and compared with a
// reference renderer: tests/engine/chat_templates/compare_template.py).
//   airlock-template SOURCE [VARS.json] [--now UNIX_SECONDS]
//   airlock-template SOURCE --dump
// SOURCE is a GGUF file (its tokenizer.chat_template, with the BOS and EOS
// tokens of its vocabulary, as airlockd renders chat requests), a Hugging
// Face tokenizer_config.json (chat_template, bos_token, eos_token), or a
// plain template file. VARS.json (standard input when absent or "-") is an
// object: "messages" (required), "add_generation_prompt" (default true),
// "bos_token"/"eos_token" (override SOURCE's), and any other variable the
// template reads ("tools", "enable_thinking", ...; null is Jinja's none).
// Prints the rendered prompt to stdout, byte for byte; a template that fails
// prints its error to stderr and exits 1; bad arguments or input exit 2.
// --dump prints what was read from SOURCE instead, as JSON
// {"chat_template", "bos_token", "eos_token"}.
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>

#include "airlock/common/json.h"

#include "airlock/common/json_depth.h"
#include "airlock/common/version.h"
#include "airlock/engine/chat_template.h"
#include "airlock/engine/gguf.h"
#include "airlock/engine/tokenizer.h"

namespace {

using namespace airlock;
using namespace airlock::engine;
using ordered_json = nlohmann::ordered_json;

int fail(const std::string& why, int code = 2) {
  std::fprintf(stderr, "airlock-template: %s\n", why.c_str());
  return code;
}

std::optional<std::string> read_all(const std::string& path) {
  if (path == "-") return std::string(std::istreambuf_iterator<char>(std::cin), {});
  std::ifstream f(path, std::ios::binary);
  if (!f) return std::nullopt;
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// tokenizer_config.json spells a special token as a string or as an object
// with "content".
std::string special_token(const ordered_json& config, const char* key) {
  if (!config.contains(key)) return "";
  const ordered_json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

struct Source {
  std::string text, bos, eos;
};

Result<Source> load_source(const std::string& path) {
  Source s;
  char magic[4] = {};
  if (path != "-" && std::ifstream(path, std::ios::binary).read(magic, 4) && std::string_view(magic, 4) == "GGUF") {
    AIRLOCK_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::open(path));
    std::optional<std::string_view> tmpl = file->get_string("tokenizer.chat_template");
    if (!tmpl) return not_found(path + " has no tokenizer.chat_template");
    s.text = std::string(*tmpl);
    AIRLOCK_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::from_gguf(*file));
    if (tok->bos() >= 0) s.bos = tok->token_bytes(tok->bos(), true);
    if (tok->eos() >= 0) s.eos = tok->token_bytes(tok->eos(), true);
    return s;
  }
  std::error_code ec;
  if (path != "-" && !std::filesystem::is_regular_file(path, ec)) return not_found(path + " is not a readable file");
  std::optional<std::string> bytes = read_all(path);
  if (!bytes) return not_found("cannot read " + path);
  // A JSON file is a tokenizer_config.json and must hold the template: its
  // text taken as a template would render unchanged, and pass any comparison.
  const bool json_name = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  const ordered_json config = ordered_json::parse(*bytes, nullptr, /*allow_exceptions=*/false);
  if (json_name || config.is_object()) {
    if (config.is_discarded() || !config.is_object() || json_deeper_than(config))
      return invalid_argument(path + ": not a JSON object nested at most " + std::to_string(kMaxJsonDepth) + " levels");
    if (!config.contains("chat_template"))
      return not_found(path + " has no chat_template (newer models keep it in chat_template.jinja: pass that file)");
    if (!config["chat_template"].is_string())
      return invalid_argument(path + ": chat_template is not a string (a list of named templates is not supported)");
    s.text = config["chat_template"].get<std::string>();
    s.bos = special_token(config, "bos_token");
    s.eos = special_token(config, "eos_token");
  } else {
    s.text = std::move(*bytes);
  }
  if (s.text.empty()) return invalid_argument(path + ": the template is empty");
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::string source_path, vars_path = "-";
  std::int64_t now = -1;
  int positional = 0;
  bool dump = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::printf("usage: airlock-template SOURCE [VARS.json] [--now UNIX_SECONDS]\n"
                  "       airlock-template SOURCE --dump\n"
                  "  SOURCE: a GGUF file, a tokenizer_config.json, or a template file\n"
                  "  VARS.json: {\"messages\": [...], \"add_generation_prompt\": true, ...} (stdin when absent)\n");
      return 0;
    }
    if (a == "--version") return std::printf("airlock-template %s\n", kVersion), 0;
    if (a == "--dump") {
      dump = true;
    } else if (a == "--now") {
      if (i + 1 >= argc) return fail("--now needs a value");
      const std::string_view v = argv[++i];
      const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), now);
      if (ec != std::errc() || end != v.data() + v.size() || now < 0)
        return fail("--now needs a whole number of seconds since 1970, not '" + std::string(v) + "'");
    } else if (positional == 0) {
      source_path = a, ++positional;
    } else if (positional == 1) {
      vars_path = a, ++positional;
    } else {
      return fail("unexpected argument " + a);
    }
  }
  if (source_path.empty()) return fail("usage: airlock-template SOURCE [VARS.json] [--now UNIX_SECONDS]");

  Result<Source> source = load_source(source_path);
  if (!source.is_ok()) return fail(source.status().to_string());
  if (dump) {
    const ordered_json j = {{"chat_template", source->text}, {"bos_token", source->bos}, {"eos_token", source->eos}};
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  std::optional<std::string> vars_text = read_all(vars_path);
  if (!vars_text) return fail("cannot read " + vars_path);
  ordered_json vars = ordered_json::parse(*vars_text, nullptr, /*allow_exceptions=*/false);
  if (json_deeper_than(vars)) return fail(vars_path + ": nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  if (!vars.is_object() || !vars.contains("messages") || !vars["messages"].is_array())
    return fail(vars_path + ": expected a JSON object with a \"messages\" array");

  ChatTemplateInputs in;
  in.messages = std::move(vars["messages"]);
  in.bos_token = source->bos;
  in.eos_token = source->eos;
  in.now_unix_s = now;
  for (auto& [key, value] : vars.items()) {
    if (key == "messages") continue;
    if (key == "add_generation_prompt") {
      if (!value.is_boolean()) return fail("add_generation_prompt must be true or false");
      in.add_generation_prompt = value.get<bool>();
    } else if ((key == "bos_token" || key == "eos_token") && value.is_string()) {
      (key == "bos_token" ? in.bos_token : in.eos_token) = value.get<std::string>();
    } else {
      in.extra[key] = std::move(value);
    }
  }

  Result<ChatTemplate> parsed = ChatTemplate::parse(source->text);
  if (!parsed.is_ok()) return fail(parsed.status().message(), 1);
  Result<std::string> out = parsed->render(in);
  if (!out.is_ok()) return fail(out.status().message(), 1);
  std::fwrite(out->data(), 1, out->size(), stdout);
  return 0;
}
