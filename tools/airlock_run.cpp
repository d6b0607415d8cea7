// airlock-run: a developer's command line for the inference engine.
//   airlock-run MODEL.gguf -p "prompt" -n 64 [--temp T] [--seed S] [--top-k K]
//               [--top-p P] [--min-p P] [--threads N] [--kv-type f16|f32] [--raw]
// Streams the generated text to stdout and prints timings to stderr.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "airlock/common/version.h"
#include "airlock/engine/model.h"
#include "airlock/engine/sampler.h"
#include "airlock/engine/thread_pool.h"
#include "airlock/engine/tokenizer.h"

namespace {

using namespace airlock;
using namespace airlock::engine;

int usage(const char* why) {
  std::fprintf(stderr,
               "airlock-run: %s\n"
               "usage: airlock-run MODEL.gguf [-p PROMPT] [-n N_TOKENS] [--temp T] [--seed S] [--top-k K]\n"
               "                   [--top-p P] [--min-p P] [--threads N] [--kv-type f16|f32]\n",
               why);
  return 2;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, prompt;
  int n_predict = 64, n_threads = 0;
  KvType kv_type = KvType::kF16;  // as airlockd stores it
  SamplingParams sp;
  sp.temperature = 0.8f;
  sp.seed = 0;
  bool seed_set = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (a == "-h" || a == "--help") return usage("help"), 0;
    if (a == "--version") return std::printf("airlock-run %s\n", kVersion), 0;
    if (a == "-p" || a == "--prompt") { if (!(v = value())) return usage("-p needs a value"); prompt = v; }
    else if (a == "-n") { if (!(v = value())) return usage("-n needs a value"); n_predict = std::atoi(v); }
    else if (a == "--temp") { if (!(v = value())) return usage("--temp needs a value"); sp.temperature = std::strtof(v, nullptr); }
    else if (a == "--seed") { if (!(v = value())) return usage("--seed needs a value"); sp.seed = std::strtoull(v, nullptr, 10); seed_set = true; }
    else if (a == "--top-k") { if (!(v = value())) return usage("--top-k needs a value"); sp.top_k = std::atoi(v); }
    else if (a == "--top-p") { if (!(v = value())) return usage("--top-p needs a value"); sp.top_p = std::strtof(v, nullptr); }
    else if (a == "--min-p") { if (!(v = value())) return usage("--min-p needs a value"); sp.min_p = std::strtof(v, nullptr); }
    else if (a == "--threads") { if (!(v = value())) return usage("--threads needs a value"); n_threads = std::atoi(v); }
    else if (a == "--kv-type") {
      if (!(v = value()) || (std::string(v) != "f16" && std::string(v) != "f32")) return usage("--kv-type is f16 or f32");
      kv_type = std::string(v) == "f16" ? KvType::kF16 : KvType::kF32;
    }
    else if (!a.empty() && a[0] == '-') return usage(("unknown option " + a).c_str());
    else if (model_path.empty()) model_path = a;
    else return usage("more than one model given");
  }
  if (model_path.empty()) return usage("no model given");
  if (n_predict < 0) return usage("-n must be >= 0");
  if (!seed_set) sp.seed = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  if (Status s = validate(sp); !s.is_ok()) return usage(s.message().c_str());

  auto pool = std::make_shared<ThreadPool>(n_threads);
  std::shared_ptr<Backend> backend = make_cpu_backend(pool);
  auto t_load = std::chrono::steady_clock::now();
  Result<std::unique_ptr<Model>> model = Model::load(model_path, backend);
  if (!model.is_ok()) {
    std::fprintf(stderr, "airlock-run: %s\n", model.status().to_string().c_str());
    return exit_code(model.status().code());
  }
  Result<std::unique_ptr<Tokenizer>> tok = Tokenizer::from_gguf((*model)->gguf());
  if (!tok.is_ok()) {
    std::fprintf(stderr, "airlock-run: %s\n", tok.status().to_string().c_str());
    return exit_code(tok.status().code());
  }
  Model& m = **model;
  const ModelParams& p = m.params();
  std::fprintf(stderr, "model: %s, %llu parameters, %.1f MiB of weights, backend %s, loaded in %.2f s\n",
               p.arch.c_str(), static_cast<unsigned long long>(m.n_params()),
               static_cast<double>(m.weight_bytes()) / (1 << 20), backend->name().c_str(), seconds_since(t_load));

  std::vector<std::int32_t> tokens = (*tok)->encode(prompt, /*add_special=*/true, /*parse_special=*/true);
  if (tokens.empty()) tokens.push_back((*tok)->bos());
  const int n_ctx = static_cast<int>(tokens.size()) + n_predict;
  if (n_ctx > p.n_ctx_train) return usage("prompt plus -n exceeds the model's context length");
  const int n_blocks = KvCache::blocks_for(n_ctx);
  KvCache cache(n_blocks);
  Result<KvStorage> kv = m.alloc_kv(n_blocks, kv_type);
  if (!kv.is_ok()) return std::fprintf(stderr, "airlock-run: %s\n", kv.status().to_string().c_str()), 2;
  (void)cache.add_sequence(0);

  Sampler sampler(sp);
  // After prompt text the first generated piece continues it, so a
  // SentencePiece leading space is real; from BOS alone it is not.
  StreamDecoder decoder(**tok, prompt.empty() ? StreamDecoder::LeadingSpace::kStrip : StreamDecoder::LeadingSpace::kKeep);
  std::vector<float> logits;
  Batch batch;
  for (std::size_t i = 0; i < tokens.size(); ++i) batch.add(tokens[i], static_cast<int>(i), 0, i + 1 == tokens.size());
  auto t_prompt = std::chrono::steady_clock::now();
  if (Status s = m.forward(batch, cache, *kv, &logits); !s.is_ok())
    return std::fprintf(stderr, "airlock-run: %s\n", s.to_string().c_str()), exit_code(s.code());
  const double prompt_s = seconds_since(t_prompt);
  const std::size_t n_prompt = tokens.size();

  auto t_gen = std::chrono::steady_clock::now();
  int n_generated = 0;
  for (; n_generated < n_predict; ++n_generated) {
    SampledToken next = sampler.sample(logits, tokens, n_prompt);
    if ((*tok)->is_end_of_generation(next.token)) break;
    tokens.push_back(next.token);
    std::string text = decoder.push(next.token);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    if (n_generated + 1 == n_predict) {
      ++n_generated;
      break;
    }
    batch.clear();
    batch.add(next.token, static_cast<int>(tokens.size()) - 1, 0, true);
    if (Status s = m.forward(batch, cache, *kv, &logits); !s.is_ok())
      return std::fprintf(stderr, "\nairlock-run: %s\n", s.to_string().c_str()), exit_code(s.code());
  }
  std::string rest = decoder.finish();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::printf("\n");
  std::fflush(stdout);
  const double gen_s = seconds_since(t_gen);
  std::fprintf(stderr, "prompt: %zu tokens in %.3f s (%.1f tok/s); generation: %d tokens in %.3f s (%.1f tok/s)\n",
               n_prompt, prompt_s, static_cast<double>(n_prompt) / prompt_s, n_generated, gen_s,
               n_generated > 0 ? n_generated / gen_s : 0.0);
  return 0;
}
