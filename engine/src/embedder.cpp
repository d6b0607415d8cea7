#include "airlock/engine/embedder.h"

#include <filesystem>
#include <system_error>

#include "airlock/engine/backend.h"
#include "airlock/engine/bert_embedding.h"
#include "airlock/engine/decoder_embedding.h"
#include "airlock/engine/gguf.h"
#include "airlock/engine/model.h"
#include "airlock/engine/static_embedding.h"
#include "airlock/engine/thread_pool.h"

namespace airlock::engine {

Result<std::unique_ptr<Embedder>> load_embedder(const std::string& path, std::shared_ptr<Backend> backend,
                                                KvType decoder_kv) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) return not_found(path + ": no such file or directory");
  if (fs::is_directory(st)) {
    AIRLOCK_ASSIGN_OR_RETURN(std::unique_ptr<StaticEmbedding> e, StaticEmbedding::load(path));
    return std::unique_ptr<Embedder>(std::move(e));
  }
  const fs::path p(path);
  if (p.filename() == "model.safetensors") {
    const std::string dir = p.has_parent_path() ? p.parent_path().string() : std::string(".");
    AIRLOCK_ASSIGN_OR_RETURN(std::unique_ptr<StaticEmbedding> e, StaticEmbedding::load(dir));
    return std::unique_ptr<Embedder>(std::move(e));
  }
  if (p.extension() != ".gguf")
    return invalid_argument(path + ": not an embedding model (a .gguf encoder or a model2vec directory)");
  Result<std::unique_ptr<GgufFile>> file = GgufFile::open(path);
  if (!file.is_ok()) return file.status().with_context(path);
  auto arch = (*file)->get_string("general.architecture");
  if (!arch) return verification_failed(path + ": gguf: general.architecture is missing");
  if (!backend) backend = make_cpu_backend(std::make_shared<ThreadPool>());
  if (*arch != "bert" && *arch != "nomic-bert") {
    if (!is_decoder_architecture(*arch))
      return invalid_argument(path + ": architecture '" + std::string(*arch) +
                              "' is not an embedding model (bert, nomic-bert, or a decoder: " +
                              decoder_architecture_list() + ")");
    Result<std::unique_ptr<DecoderEmbedding>> d = DecoderEmbedding::from_gguf(std::move(*file), std::move(backend), decoder_kv);
    if (!d.is_ok()) return d.status().with_context(path);
    return std::unique_ptr<Embedder>(std::move(*d));
  }
  Result<std::unique_ptr<BertEmbedding>> e = BertEmbedding::from_gguf(std::move(*file), std::move(backend));
  if (!e.is_ok()) return e.status().with_context(path);
  return std::unique_ptr<Embedder>(std::move(*e));
}

}  // namespace airlock::engine
