// airlock-gen-model OUT.gguf [--embd N] [--layers N] [--ff N] [--heads N]
//                   [--kv-heads N] [--ctx N] [--f32]
// writes a random Llama-architecture model (Q8_0 weights unless --f32) with a
// byte-level SentencePiece vocabulary (every byte is a token, so any text
// tokenizes). For demos, tests and benchmarks on machines without a real
// model: its output is random text. The defaults make a 2.5 MB model;
// --embd 2048 --layers 16 --ff 5632 --heads 32 --kv-heads 8 is ~1B parameters.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "gguf_writer.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: airlock-gen-model OUT.gguf [--embd N] [--layers N] [--ff N] [--heads N] [--kv-heads N] "
                 "[--ctx N] [--f32]\n");
    return 2;
  }
  using namespace airlock;
  testing::TestModelSpec spec;
  spec.n_vocab = 3 + 256;
  spec.n_embd = 256;
  spec.n_layer = 4;
  spec.n_head = 8;
  spec.n_head_kv = 4;
  spec.n_ff = 512;
  spec.n_ctx = 2048;
  spec.weight_type = engine::GgmlType::kQ8_0;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--f32") {
      spec.weight_type = engine::GgmlType::kF32;
      continue;
    }
    if (i + 1 >= argc) return std::fprintf(stderr, "airlock-gen-model: %s needs a value\n", a.c_str()), 2;
    const int v = std::atoi(argv[++i]);
    if (v <= 0) return std::fprintf(stderr, "airlock-gen-model: %s must be positive\n", a.c_str()), 2;
    if (a == "--embd") spec.n_embd = v;
    else if (a == "--layers") spec.n_layer = v;
    else if (a == "--ff") spec.n_ff = v;
    else if (a == "--heads") spec.n_head = v;
    else if (a == "--kv-heads") spec.n_head_kv = v;
    else if (a == "--ctx") spec.n_ctx = v;
    else return std::fprintf(stderr, "airlock-gen-model: unknown option %s\n", a.c_str()), 2;
  }
  if (spec.n_embd % spec.n_head != 0 || spec.n_head % spec.n_head_kv != 0 || spec.n_embd % 32 != 0)
    return std::fprintf(stderr, "airlock-gen-model: embd must divide by heads and 32, heads by kv-heads\n"), 2;
  spec.metadata = [](testing::GgufWriter& w) {
    std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
    std::vector<std::int32_t> types = {2, 3, 3};  // unknown, control, control
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      tokens.push_back(name);
      types.push_back(6);  // byte
    }
    w.set_string("general.name", "airlock generated random model");
    w.set_string("tokenizer.ggml.model", "llama");
    w.set_string_array("tokenizer.ggml.tokens", tokens);
    w.set_f32_array("tokenizer.ggml.scores", std::vector<float>(tokens.size(), 0.0f));
    w.set_i32_array("tokenizer.ggml.token_type", types);
    w.set_u32("tokenizer.ggml.unknown_token_id", 0);
    w.set_u32("tokenizer.ggml.bos_token_id", 1);
    w.set_u32("tokenizer.ggml.eos_token_id", 2);
  };
  const testing::TestModel m = testing::make_test_model(spec);
  std::ofstream out(argv[1], std::ios::binary | std::ios::trunc);
  out.write(m.gguf.data(), static_cast<std::streamsize>(m.gguf.size()));
  out.close();
  if (!out) {
    std::fprintf(stderr, "airlock-gen-model: cannot write %s\n", argv[1]);
    return 1;
  }
  std::printf("wrote %s (%zu bytes): a random model, its output is random text\n", argv[1], m.gguf.size());
  return 0;
}
