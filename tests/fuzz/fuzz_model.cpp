// libFuzzer target: what the engine makes of a GGUF file's model metadata
// and tensors (Model::from_gguf: architecture keys, the Gemma / Phi-3 /
// Granite variations, fused and per-layer forms, RoPE factor tensors;
// Tokenizer::from_gguf), then one forward pass of one token when the model
// loads. Seeds: small generated models of each architecture
// (fuzz_seed_corpus writes them).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "airlock/engine/backend.h"
#include "airlock/engine/gguf.h"
#include "airlock/engine/kv_cache.h"
#include "airlock/engine/model.h"
#include "airlock/engine/thread_pool.h"
#include "airlock/engine/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace airlock::engine;
  static std::shared_ptr<Backend> cpu = make_cpu_backend(std::make_shared<ThreadPool>(1));
  {
    auto f = GgufFile::parse({data, size});
    if (!f.is_ok()) return 0;
    (void)Tokenizer::from_gguf(**f).is_ok();
  }
  auto f = GgufFile::parse({data, size});
  if (!f.is_ok()) return 0;
  auto m = Model::from_gguf(std::move(*f), cpu);
  if (!m.is_ok()) return 0;
  Model& model = **m;
  // One token at position 0: a cache of two blocks is enough.
  KvCache cache(2);
  auto kv = model.alloc_kv(2, KvType::kF16);
  if (!kv.is_ok() || !cache.add_sequence(0).is_ok()) return 0;
  Batch b;
  b.add(0, 0, 0, true);
  std::vector<float> logits;
  (void)model.forward(b, cache, *kv, &logits).is_ok();
  return 0;
}
