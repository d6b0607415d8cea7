// Ingestion of one document: extract its text (extract.h), cut it into
// token-sized chunks (chunker.h), embed the chunks and store them with the
// document in one transaction (store.h).
//
// Work is skipped early when it cannot change anything: a source whose
// content hash is already stored is "unchanged", the same content under
// another source is a "duplicate"; neither is extracted or embedded.
//
// Errors: the extractor's (kInvalidArgument for unsupported or malformed
// files, kResourceExhausted over the limits, kUnavailable without
// pdftotext), the store's (kNotFound, kPermissionDenied, ...).
// Thread-safety: may run concurrently (the store serialises its writes).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "airlock/common/status.h"
#include "airlock/rag/chunker.h"
#include "airlock/rag/embedder.h"
#include "airlock/rag/extract.h"
#include "airlock/rag/store.h"

namespace airlock::rag {

struct IngestOptions {
  ChunkOptions chunk;
  ExtractLimits limits;
  std::size_t embed_batch = 32;  // chunks per embedding call
};

struct IngestResult {
  PutResult put;
  std::string format;  // text, markdown, html, docx, pdf
  std::string title;
  std::size_t n_chunks = 0;
  std::size_t n_tokens = 0;  // over all chunks
};

// Errors do not name the document: the caller, which knows it as `source`,
// names it once. `metadata_json` empty: none given ("{}" for a new or
// changed document; an unchanged one keeps its metadata).
Result<IngestResult> ingest_document(Store& store, const Embedder& embedder, const std::string& collection,
                                     const std::string& source, std::string_view bytes, const std::string& metadata_json,
                                     const Principal& who, const IngestOptions& options = {});

// Hex SHA-256 of `bytes`.
std::string sha256_hex(std::string_view bytes);

}  // namespace airlock::rag
