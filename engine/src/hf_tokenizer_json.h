// Hugging Face tokenizer.json, parsed once: the checks every model type
// shares (a JSON object with a string model.type), and the per-type readers
// that turn the parsed document into a TokenizerSpec. The public
// *_spec_from_hf_json functions (static_embedding.h) wrap these.
#pragma once

#include <string_view>

#include <nlohmann/json.hpp>

#include "airlock/common/status.h"
#include "airlock/engine/tokenizer.h"

namespace airlock::engine {

// kVerificationFailed unless `text` is a JSON object with a string model.type.
Result<nlohmann::json> parse_hf_tokenizer_json(std::string_view text);

// `j` has passed parse_hf_tokenizer_json.
Result<TokenizerSpec> wordpiece_spec(const nlohmann::json& j);
Result<TokenizerSpec> unigram_spec(const nlohmann::json& j);

}  // namespace airlock::engine
