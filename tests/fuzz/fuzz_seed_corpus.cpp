// Writes seed inputs for the fuzzers into DIR/{manifest,bundle,gguf,model}/.
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "airlock/verifier/bundle_writer.h"
#include "fuzz_keys.h"
#include "gguf_writer.h"

namespace {
void write(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));
}
}  // namespace

int main(int argc, char** argv) {
  using namespace airlock::verifier;
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seed_corpus DIR\n");
    return 2;
  }
  std::string dir = argv[1];
  for (const char* sub : {"", "/manifest", "/bundle", "/gguf", "/work", "/model"}) ::mkdir((dir + sub).c_str(), 0755);
  // Small models of every architecture the loader knows (a few KB each),
  // with the keys and tensors each variation reads.
  {
    using airlock::testing::TestModelSpec;
    auto tiny = [](const char* arch) {
      TestModelSpec s = airlock::testing::decoder_spec(arch, 32, 2, 1, 32, true, airlock::engine::GgmlType::kQ8_0);
      s.n_vocab = 32;
      s.n_ctx = 64;
      return s;
    };
    std::vector<TestModelSpec> specs = {tiny("llama"), tiny("qwen2"), tiny("qwen3"), tiny("phi3"), tiny("granite"),
                                        tiny("gemma"), tiny("gemma2"), tiny("gemma3")};
    specs[3].n_rot = 12;
    specs[3].rope_orig_ctx = 32;
    specs[3].rope_attn_factor = 1.2f;
    specs[4].residual_scale = 0.2f;
    specs[4].embedding_scale = 12.0f;
    specs[4].kv_heads_per_layer = {1, 1};
    specs[4].biases = true;
    specs[6].sliding_window = 4;
    specs[7].sliding_window = 4;
    specs[7].rope_linear = 8.0f;
    // vocabularies for Tokenizer::from_gguf: SentencePiece and byte-level BPE
    auto spm = [](airlock::testing::GgufWriter& w) {
      std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "<0x0A>"};
      std::vector<float> scores = {0, 0, 0, 0};
      std::vector<std::int32_t> types = {2, 3, 3, 6};
      for (char c = 'a'; tokens.size() < 32; ++c) {
        tokens.push_back(std::string("\xE2\x96\x81") + c);
        scores.push_back(-static_cast<float>(tokens.size()));
        types.push_back(1);
      }
      w.set_string("tokenizer.ggml.model", "llama");
      w.set_string_array("tokenizer.ggml.tokens", tokens);
      w.set_f32_array("tokenizer.ggml.scores", scores);
      w.set_i32_array("tokenizer.ggml.token_type", types);
    };
    auto bpe_with = [](const char* pre) {
      return [pre](airlock::testing::GgufWriter& w) {
        std::vector<std::string> tokens;
        for (char c = 'a'; c <= 'z'; ++c) tokens.push_back(std::string(1, c));
        for (const char* t : {"ab", "abc", "\xC4\xA0", "\xC4\xA0" "a", "<|endoftext|>", "<|im_end|>"}) tokens.push_back(t);
        w.set_string("tokenizer.ggml.model", "gpt2");
        w.set_string("tokenizer.ggml.pre", pre);
        w.set_string_array("tokenizer.ggml.tokens", tokens);
        w.set_string_array("tokenizer.ggml.merges", {"a b", "ab c", "\xC4\xA0 a"});
        w.set_u32("tokenizer.ggml.eos_token_id", 30);
      };
    };
    specs[0].metadata = spm;
    specs[1].metadata = bpe_with("qwen2");
    specs[2].metadata = bpe_with("llama-bpe");
    specs[4].metadata = bpe_with("refact");
    specs[7].metadata = spm;
    for (const TestModelSpec& s : specs)
      write(dir + "/model/" + s.arch + ".gguf", airlock::testing::make_test_model(s).gguf);
  }
  // A tiny GGUF v3 header: one metadata key, one F32 tensor of 4 elements.
  std::string gguf("GGUF", 4);
  auto u32 = [&](std::uint32_t v) { gguf.append(reinterpret_cast<const char*>(&v), 4); };
  auto u64 = [&](std::uint64_t v) { gguf.append(reinterpret_cast<const char*>(&v), 8); };
  auto str = [&](const std::string& s) { u64(s.size()); gguf += s; };
  u32(3); u64(1); u64(1);
  str("general.architecture"); u32(8); str("llama");
  str("w"); u32(1); u64(4); u32(0); u64(0);
  gguf.resize((gguf.size() + 31) / 32 * 32, '\0');
  gguf += std::string(16, '\0');
  write(dir + "/gguf/seed.gguf", gguf);
  write(dir + "/work/model.gguf", gguf);
  write(dir + "/work/LICENSE", "MIT\n");
  write(dir + "/work/data.bin", std::string(150000, 'x'));

  CreateOptions o;
  o.name = "fuzz";
  o.version = 1;
  o.created_at = 1780000000;
  o.chunk_size = 64 * 1024;
  airlock::Result<VerifiedBundle> b = create_bundle({{FileRole::kLlm, dir + "/work/model.gguf", "model.gguf"},
                                                     {FileRole::kLicense, dir + "/work/LICENSE", "LICENSE"},
                                                     {FileRole::kOther, dir + "/work/data.bin", "d/data.bin"}},
                                                    airlock::fuzz::fuzz_key(), o, dir + "/bundle/seed.airlock");
  if (!b.is_ok()) {
    std::fprintf(stderr, "%s\n", b.status().to_string().c_str());
    return 1;
  }
  write(dir + "/manifest/manifest.json", b->manifest_bytes);
  write(dir + "/manifest/manifest.json.minisig", b->signature_text);
  write(dir + "/manifest/key.pub", format_public_key(airlock::fuzz::fuzz_key().public_key()));
  return 0;
}
