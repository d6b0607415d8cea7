// Test helper: the SentencePiece Unigram vocabularies of
// tests/engine/sentencepiece/vectors.json (trained by make_vectors.py, with
// sentencepiece's own ids for their texts), as TokenizerSpecs and as GGUF
// "t5" tokenizer metadata, for the tokenizer's and XLM-RoBERTa's tests.
#pragma once

#include <cstdint>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "airlock/common/json.h"

#include "airlock/engine/gguf.h"
#include "airlock/engine/tokenizer.h"
#include "gguf_writer.h"

namespace airlock::testing {

inline std::string decode_base64(const std::string& in) {
  static const std::string kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    const std::size_t v = kAlphabet.find(c);
    if (v == std::string::npos) continue;
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

inline const nlohmann::json& vectors() {
  static const nlohmann::json v = [] {
    const std::string file = __FILE__;
    std::ifstream f(file.substr(0, file.rfind('/')) + "/sentencepiece/vectors.json");
    if (!f) throw std::runtime_error("tests/engine/sentencepiece/vectors.json is missing");
    std::stringstream ss;
    ss << f.rdbuf();
    return nlohmann::json::parse(ss.str());
  }();
  return v;
}

// "nfkc", "keep_ws", "no_prefix" or "identity" (make_vectors.py).
inline const nlohmann::json& model_named(const std::string& name) {
  for (const auto& m : vectors().at("models"))
    if (m.at("name") == name) return m;
  throw std::runtime_error("no model " + name);
}

// The spec of one of the trained models, as a GGUF t5 vocabulary holds it.
inline engine::TokenizerSpec spec_of(const nlohmann::json& m) {
  engine::TokenizerSpec s;
  s.model = "t5";
  for (const auto& p : m.at("pieces")) {
    s.tokens.push_back(p.at(0).get<std::string>());
    s.scores.push_back(p.at(1).get<float>());
    s.types.push_back(static_cast<engine::TokenType>(p.at(2).get<int>()));
  }
  s.unk = m.at("unk").get<std::int32_t>();
  s.add_space_prefix = m.at("add_dummy_prefix").get<bool>();
  s.remove_extra_whitespaces = m.at("remove_extra_whitespaces").get<bool>();
  s.precompiled_charsmap = decode_base64(vectors().at("charsmaps").at(m.at("rule").get<std::string>()).get<std::string>());
  return s;
}

// Writes `m` as tokenizer.* keys; with_ids: <unk> as trained, <s> 1 and
// </s> 2 as BOS and EOS, both added (as llama.cpp's XLM-RoBERTa converter
// writes them). The charsmap as u8 (what gguf-py writes) or, to test the
// refusal, i32.
inline void set_t5_vocab(GgufWriter& w, const nlohmann::json& m, bool with_ids,
                         engine::GgufValueType charsmap_type = engine::GgufValueType::kU8) {
  const engine::TokenizerSpec s = spec_of(m);
  w.set_string("tokenizer.ggml.model", "t5");
  w.set_string_array("tokenizer.ggml.tokens", s.tokens);
  w.set_f32_array("tokenizer.ggml.scores", s.scores);
  std::vector<std::int32_t> types;
  for (engine::TokenType ty : s.types) types.push_back(static_cast<std::int32_t>(ty));
  w.set_i32_array("tokenizer.ggml.token_type", types);
  if (charsmap_type == engine::GgufValueType::kU8) {
    w.set_u8_array("tokenizer.ggml.precompiled_charsmap", s.precompiled_charsmap);
  } else {
    std::vector<std::int32_t> wide(s.precompiled_charsmap.begin(), s.precompiled_charsmap.end());
    w.set_i32_array("tokenizer.ggml.precompiled_charsmap", wide);
  }
  w.set_bool("tokenizer.ggml.add_space_prefix", s.add_space_prefix);
  w.set_bool("tokenizer.ggml.remove_extra_whitespaces", s.remove_extra_whitespaces);
  if (with_ids) {
    w.set_u32("tokenizer.ggml.unknown_token_id", static_cast<std::uint32_t>(s.unk));
    w.set_u32("tokenizer.ggml.bos_token_id", 1);
    w.set_u32("tokenizer.ggml.eos_token_id", 2);
    w.set_bool("tokenizer.ggml.add_bos_token", true);
    w.set_bool("tokenizer.ggml.add_eos_token", true);
  }
}

}  // namespace airlock::testing
