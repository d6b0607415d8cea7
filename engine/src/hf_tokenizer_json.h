// Hugging Face tokenizer.json, parsed once: the checks every model type
// shares (a JSON object with a string model.type), and the per-type readers
// that turn the parsed document into a TokenizerSpec. The public
// *_spec_from_hf_json functions (static_embedding.h) wrap these.
#pragma once

#include <string>
#include <string_view>

#include "airlock/common/json.h"

#include "airlock/common/status.h"
#include "airlock/engine/tokenizer.h"

namespace airlock::engine {

// kVerificationFailed unless `text` is a JSON object with a string model.type.
Result<nlohmann::json> parse_hf_tokenizer_json(std::string_view text);

// `j` has passed parse_hf_tokenizer_json. They may throw
// nlohmann::json::exception on a value of the wrong type (`.value()` and
// `get<T>()`): call them through catching_json.
Result<TokenizerSpec> wordpiece_spec(const nlohmann::json& j);
Result<TokenizerSpec> unigram_spec(const nlohmann::json& j);

// Runs `read` (a reader of parsed JSON from a model file) and turns an
// nlohmann::json exception into kVerificationFailed naming `what`: the edge
// where this library's JSON readers stop throwing.
template <typename F>
auto catching_json(const std::string& what, F&& read) -> decltype(read()) {
  try {
    return read();
  } catch (const nlohmann::json::exception& e) {
    return verification_failed(what + ": a value has the wrong type (" + e.what() + ")");
  }
}

}  // namespace airlock::engine
