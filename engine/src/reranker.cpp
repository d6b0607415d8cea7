#include "airlock/engine/reranker.h"

#include "airlock/engine/backend.h"
#include "airlock/engine/bert_embedding.h"
#include "airlock/engine/decoder_reranker.h"
#include "airlock/engine/gguf.h"
#include "airlock/engine/model.h"
#include "airlock/engine/thread_pool.h"

namespace airlock::engine {

Result<std::unique_ptr<Reranker>> load_reranker(const std::string& path, std::shared_ptr<Backend> backend,
                                                KvType decoder_kv) {
  Result<std::unique_ptr<GgufFile>> file = GgufFile::open(path);
  if (!file.is_ok()) return file.status().with_context(path);
  auto arch = (*file)->get_string("general.architecture");
  if (!arch) return verification_failed(path + ": gguf: general.architecture is missing");
  if (!backend) backend = make_cpu_backend(std::make_shared<ThreadPool>());
  if (*arch == "bert" || *arch == "nomic-bert") {
    Result<std::unique_ptr<BertEmbedding>> e =
        BertEmbedding::from_gguf(std::move(*file), std::move(backend), EncoderUse::kRerank);
    if (!e.is_ok()) return e.status().with_context(path);
    return std::unique_ptr<Reranker>(std::move(*e));
  }
  if (!is_decoder_architecture(*arch))
    return invalid_argument(path + ": architecture '" + std::string(*arch) +
                            "' is not a reranker (bert, or a decoder: " + decoder_architecture_list() + ")");
  Result<std::unique_ptr<DecoderReranker>> d = DecoderReranker::from_gguf(std::move(*file), std::move(backend), decoder_kv);
  if (!d.is_ok()) return d.status().with_context(path);
  return std::unique_ptr<Reranker>(std::move(*d));
}

}  // namespace airlock::engine
