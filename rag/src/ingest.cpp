#include "airlock/rag/ingest.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cmath>

#include "text_builder.h"

namespace airlock::rag {

std::string sha256_hex(std::string_view bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &n, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (unsigned int i = 0; i < n; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 15];
  }
  return out;
}

Result<IngestResult> ingest_document(Store& store, const Embedder& embedder, const std::string& collection,
                                     const std::string& source, std::string_view bytes, const std::string& metadata_json,
                                     const Principal& who, const IngestOptions& options) {
  if (embedder.dim() != store.dim())
    return invalid_argument("the embedding model gives " + std::to_string(embedder.dim()) +
                            " dimensions, the store holds " + std::to_string(store.dim()));
  // Same dimension, another model: its vectors would sit beside the
  // store's in one space they do not share.
  if (embedder.model_id() != store.embedder_id())
    return invalid_argument("the embedding model is " + embedder.model_id() + ", the store holds vectors of " +
                            store.embedder_id());
  AIRLOCK_RETURN_IF_ERROR(check_source_name(source));
  AIRLOCK_RETURN_IF_ERROR(store.check_writable(collection, who));
  IngestResult result;
  DocumentRecord doc;
  doc.source = source;
  doc.content_hash = sha256_hex(bytes);
  doc.metadata_json = metadata_json.empty() ? "{}" : metadata_json;
  doc.owner = who.key;
  doc.n_bytes = static_cast<std::int64_t>(bytes.size());

  // Nothing to do for content the collection already holds: this source's
  // own, with no metadata given or the same (unchanged), or, for a new
  // source, another's (a duplicate). An existing source given other
  // content, or other metadata, is replaced (below), even when another
  // document holds that content: its old text (or metadata) must not stay.
  AIRLOCK_ASSIGN_OR_RETURN(std::optional<DocumentInfo> mine, store.find_document(collection, source, who));
  std::optional<std::string> holder;
  if (mine && mine->content_hash == doc.content_hash && (metadata_json.empty() || mine->metadata_json == doc.metadata_json))
    holder = source;
  if (!mine) {
    AIRLOCK_ASSIGN_OR_RETURN(holder, store.source_with_hash(collection, doc.content_hash, who));
  }
  if (holder) {
    result.put.outcome = *holder == source ? PutOutcome::kUnchanged : PutOutcome::kDuplicate;
    if (*holder != source) result.put.duplicate_of = *holder;
    AIRLOCK_ASSIGN_OR_RETURN(std::optional<DocumentInfo> d, store.find_document(collection, *holder, who));
    if (d) {
      result.put.document_id = d->id;
      result.format = d->format;
      result.title = d->title;
      result.n_chunks = static_cast<std::size_t>(d->n_chunks);
    }
    return result;
  }

  AIRLOCK_ASSIGN_OR_RETURN(ExtractedDocument text, internal::extract_unnamed(source, bytes, options.limits));
  result.format = std::string(format_name(text.format));
  result.title = text.title;
  doc.format = result.format;
  doc.title = text.title;
  AIRLOCK_ASSIGN_OR_RETURN(
      std::vector<TextChunk> chunks,
      chunk_text(text.text, [&](std::string_view t) { return embedder.count_tokens(t); }, options.chunk));
  if (chunks.empty()) return invalid_argument("no text to index");

  const std::size_t batch = std::max<std::size_t>(1, options.embed_batch);
  for (std::size_t i = 0; i < chunks.size(); i += batch) {
    const std::size_t n = std::min(batch, chunks.size() - i);
    std::vector<std::string> texts;
    texts.reserve(n);
    for (std::size_t k = 0; k < n; ++k) texts.push_back(chunks[i + k].text);
    std::vector<std::vector<float>> vectors = embedder.embed(texts);
    if (vectors.size() != n) return internal_error("the embedding model returned the wrong number of vectors");
    // An encoder that failed answers with empty vectors: the server's fault,
    // not the document's (the store would call it a bad chunk vector).
    for (const std::vector<float>& v : vectors)
      if (v.size() != static_cast<std::size_t>(store.dim()) ||
          !std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); }))
        return internal_error("the embedding model failed on a chunk of this document");
    for (std::size_t k = 0; k < n; ++k) {
      TextChunk& c = chunks[i + k];
      ChunkRecord r;
      r.begin = static_cast<std::int64_t>(c.begin);
      r.end = static_cast<std::int64_t>(c.end);
      r.n_tokens = static_cast<std::int64_t>(c.n_tokens);
      r.text = std::move(c.text);
      r.embedding = std::move(vectors[k]);
      result.n_tokens += c.n_tokens;
      doc.chunks.push_back(std::move(r));
    }
  }
  result.n_chunks = doc.chunks.size();
  AIRLOCK_ASSIGN_OR_RETURN(result.put, store.put_document(collection, doc, who));
  return result;
}

}  // namespace airlock::rag
