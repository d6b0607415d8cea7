// The RAG store: one SQLite database (WAL) with collections, their readers,
// documents, chunks with their embeddings, and an FTS5 index over chunk text
// (BM25); plus an in-memory vector index per collection (exact below a size
// threshold, HNSW above it) built from the database when the store opens and
// updated with every write.
//
// Consistency: a document, its chunks, their FTS rows and their vectors are
// written in one transaction, so a crash at any point leaves either the old
// or the new document everywhere. The vector index is derived data: it is
// rebuilt from the database at open and changed only after a commit.
//
// Access control: a collection has an owner (an API key name) and readers
// ("key:NAME", "group:NAME" or "*" for every key). A search first works out
// the collections the caller may read and then searches only those (the FTS
// query is restricted to them; each collection has its own vector index),
// so results the caller may not see never take a place in the top k.
//
// Thread-safety: all methods may be called concurrently; writes are
// serialised, searches run in parallel with each other.
// Errors: kInvalidArgument (bad names, sizes, dimensions), kNotFound,
// kAlreadyExists, kPermissionDenied, kIoError (SQLite), kVerificationFailed
// (a database built with a different embedding model, or corrupt rows).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/common/status.h"

namespace airlock::rag {

// Who is asking: the API key's name and the groups it belongs to. An admin
// may read and manage every collection.
struct Principal {
  std::string key;
  std::vector<std::string> groups;
  bool admin = false;
};

struct StoreOptions {
  // Collections with fewer vectors than this are searched exactly; larger
  // ones get an HNSW graph, built in the background (searches stay exact
  // until it is ready).
  std::size_t ann_threshold = 20000;
  int hnsw_m = 16;
  int hnsw_ef_construction = 100;
  int hnsw_ef_search = 160;
  unsigned hnsw_build_threads = 0;  // 0: every core
};

struct CollectionInfo {
  std::string name, owner, description;
  std::vector<std::string> readers;
  std::int64_t created_at = 0;  // unix seconds
  std::int64_t n_documents = 0, n_chunks = 0;
};

struct ChunkRecord {
  std::string text;
  std::int64_t begin = 0, end = 0;  // byte offsets into the document's extracted text
  std::int64_t n_tokens = 0;
  std::vector<float> embedding;     // dim floats, L2-normalised
};

struct DocumentRecord {
  std::string source;        // the name the document is known by (file name), unique per collection
  std::string content_hash;  // hex SHA-256 of the original bytes
  std::string format;        // text, markdown, html, docx, pdf
  std::string title;
  std::string metadata_json = "{}";  // a JSON object
  std::string owner;
  std::int64_t n_bytes = 0;
  std::vector<ChunkRecord> chunks;
};

struct DocumentInfo {
  std::int64_t id = 0;
  std::string collection, source, content_hash, format, title, metadata_json, owner;
  std::int64_t ingested_at = 0, n_bytes = 0, n_chunks = 0;
};

enum class PutOutcome {
  kAdded,      // a new source
  kReplaced,   // the source existed with other content: its chunks were replaced
  kUnchanged,  // the source exists with the same content hash: nothing written
  kDuplicate,  // another source in the collection has the same content: nothing written
};
struct PutResult {
  PutOutcome outcome = PutOutcome::kAdded;
  std::int64_t document_id = 0;
  std::string duplicate_of;  // with kDuplicate: the source holding the content
};

enum class SearchMode { kHybrid, kBm25, kVector };

struct SearchRequest {
  std::vector<std::string> collections;  // empty: every collection the caller may read
  std::string query;                     // for BM25
  std::vector<float> query_vector;       // for vectors (dim floats); empty in kBm25 mode
  SearchMode mode = SearchMode::kHybrid;
  int top_k = 5;
  int candidates = 50;                   // per retriever, before fusion
};

struct SearchHit {
  std::int64_t chunk_id = 0, document_id = 0;
  std::string collection, source, title, text;
  std::int64_t position = 0;        // chunk index in its document
  std::int64_t begin = 0, end = 0;  // byte offsets in the document text
  double score = 0;                 // reciprocal-rank fusion (or the single retriever's) score
  std::optional<int> bm25_rank, vector_rank;  // 1-based
  std::optional<double> bm25;       // FTS5 bm25() (lower is better)
  std::optional<double> similarity; // cosine similarity with the query
  double term_coverage = 0;         // share of the query's content words the chunk contains (FTS5, stemmed)
  std::optional<double> rerank_score;  // set by a caller that reorders hits with a cross-encoder (0..1)
};

struct ConsistencyReport {
  bool ok = false;
  std::string why;  // the first problem found
  std::int64_t n_documents = 0, n_chunks = 0, n_vectors = 0;
  std::int64_t n_hnsw_collections = 0;  // collections searched through an HNSW graph
};

class Store {
 public:
  // Opens or creates the database at `path` (0600) for embeddings of
  // `dim` floats from model `embedder_id`; kVerificationFailed when the
  // database was built with another model (re-ingest into a new store).
  static Result<std::unique_ptr<Store>> open(const std::string& path, const std::string& embedder_id, int dim,
                                             const StoreOptions& options = {});
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  int dim() const;
  // The embedding model whose vectors the store holds (open()'s embedder_id).
  const std::string& embedder_id() const;

  // Collection names: 1-64 characters of [A-Za-z0-9._-], not starting with
  // '.'. The creator owns it. Readers: "key:NAME", "group:NAME" or "*".
  Result<CollectionInfo> create_collection(const std::string& name, const Principal& creator,
                                           const std::vector<std::string>& readers, const std::string& description);
  // The collections `who` may read.
  Result<std::vector<CollectionInfo>> list_collections(const Principal& who) const;
  Result<CollectionInfo> get_collection(const std::string& name, const Principal& who) const;
  // Owner or admin only; removes its documents from every index.
  Status delete_collection(const std::string& name, const Principal& who);

  // Adds or replaces a document. Writing (put, delete) is for the
  // collection's owner and admins; kPermissionDenied for readers, kNotFound
  // for keys that may not even read the collection.
  Result<PutResult> put_document(const std::string& collection, const DocumentRecord& doc, const Principal& who);
  // Readers may list documents and look one up by source.
  Result<std::vector<DocumentInfo>> list_documents(const std::string& collection, const Principal& who) const;
  Result<std::optional<DocumentInfo>> find_document(const std::string& collection, const std::string& source,
                                                    const Principal& who) const;
  Status delete_document(const std::string& collection, const std::string& source, const Principal& who);
  // OK when `who` may write to the collection (before doing expensive work).
  Status check_writable(const std::string& collection, const Principal& who) const;
  // The source of a document in the collection with this content hash, if any.
  Result<std::optional<std::string>> source_with_hash(const std::string& collection, const std::string& content_hash,
                                                      const Principal& who) const;

  Result<std::vector<SearchHit>> search(const SearchRequest& request, const Principal& who) const;

  // PRAGMA integrity_check, the FTS5 index against its content, every chunk's
  // vector size, and the in-memory index against the database.
  Result<ConsistencyReport> check() const;
  // Waits until background HNSW builds have finished (tests, benchmarks).
  void wait_for_index() const;

 private:
  struct Impl;
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// OK for a document source name: 1-1024 bytes of UTF-8 text without control
// characters (names end up in prompts, JSON and terminals).
Status check_source_name(std::string_view source);

// Content words of a query or text for term coverage: lower-cased ASCII
// letters and digits (and any non-ASCII bytes) of length >= 2, stop words
// dropped, a crude English suffix stripped. Exposed for tests.
std::vector<std::string> content_terms(std::string_view text);

}  // namespace airlock::rag
