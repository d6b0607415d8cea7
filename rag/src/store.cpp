#include "airlock/rag/store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <unordered_map>
#include <utility>

#include "airlock/common/json.h"

#include "airlock/common/log.h"
#include "sqlite_util.h"
#include "vector_index.h"

namespace airlock::rag {
namespace {

using sql::Stmt;

constexpr int kSchemaVersion = 1;
constexpr std::size_t kMaxSourceBytes = 1024;
constexpr std::size_t kMaxMetadataBytes = 64 << 10;
constexpr std::size_t kMaxChunksPerDocument = 200000;
constexpr std::size_t kMaxReaders = 256;
constexpr int kRrfK = 60;  // reciprocal-rank fusion constant (Cormack et al.)

constexpr const char* kSchema =
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS collections ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, owner TEXT NOT NULL,"
    " description TEXT NOT NULL DEFAULT '', created_at INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS collection_readers ("
    " collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,"
    " principal TEXT NOT NULL, PRIMARY KEY (collection_id, principal));"
    "CREATE TABLE IF NOT EXISTS documents ("
    " id INTEGER PRIMARY KEY, collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,"
    " source TEXT NOT NULL, content_hash TEXT NOT NULL, format TEXT NOT NULL, title TEXT NOT NULL,"
    " metadata TEXT NOT NULL, owner TEXT NOT NULL, ingested_at INTEGER NOT NULL, n_bytes INTEGER NOT NULL,"
    " UNIQUE (collection_id, source));"
    "CREATE INDEX IF NOT EXISTS documents_by_hash ON documents(collection_id, content_hash);"
    // AUTOINCREMENT: a chunk id is never reused, so an id names one text forever.
    "CREATE TABLE IF NOT EXISTS chunks ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,"
    " collection_id INTEGER NOT NULL, position INTEGER NOT NULL, begin_byte INTEGER NOT NULL,"
    " end_byte INTEGER NOT NULL, n_tokens INTEGER NOT NULL, text TEXT NOT NULL, embedding BLOB NOT NULL);"
    "CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document_id);"
    "CREATE INDEX IF NOT EXISTS chunks_by_collection ON chunks(collection_id);"
    "CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5("
    " text, content='chunks', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2');"
    "CREATE TRIGGER IF NOT EXISTS chunks_fts_insert AFTER INSERT ON chunks BEGIN"
    " INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text); END;"
    "CREATE TRIGGER IF NOT EXISTS chunks_fts_delete AFTER DELETE ON chunks BEGIN"
    " INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text); END;";

bool valid_collection_name(const std::string& n) {
  if (n.empty() || n.size() > 64 || n[0] == '.') return false;
  return std::all_of(n.begin(), n.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
  });
}

// UTF-8 without C0/C1 controls (names end up in prompts, JSON and terminals).
bool printable_utf8(std::string_view s, bool allow_newlines = false) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = p[i];
    const std::size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
    for (std::size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    static constexpr char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    if ((cp < 0x20 && !(allow_newlines && (cp == '\n' || cp == '\t'))) || (cp >= 0x7f && cp <= 0x9f)) return false;
    i += len;
  }
  return true;
}

bool valid_reader(const std::string& r) {
  if (r == "*") return true;
  auto name_ok = [](std::string_view n) {
    return !n.empty() && n.size() <= 64 && std::all_of(n.begin(), n.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
             c == '-' || c == '@';
    });
  };
  if (r.rfind("key:", 0) == 0) return name_ok(std::string_view(r).substr(4));
  if (r.rfind("group:", 0) == 0) return name_ok(std::string_view(r).substr(6));
  return false;
}

const std::set<std::string>& stop_words() {
  static const std::set<std::string> words = {
      "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "as", "at", "be",
      "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do",
      "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having",
      "he", "her", "here", "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just",
      "me", "more", "most", "my", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our",
      "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "them",
      "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very",
      "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would",
      "you", "your", "there", "been", "also", "may", "must", "shall", "tell", "give", "known", "one", "many", "much",
      "get", "gets", "got", "please", "something", "anything", "thing", "things", "kind", "way", "ways"};
  return words;
}

// Lower-cased words: runs of ASCII letters and digits, or of non-ASCII bytes.
// Punctuation outside ASCII that separates words as ASCII punctuation does:
// curly quotes, dashes, ellipsis, inverted marks, no-break space.
std::size_t unicode_separator(std::string_view t, std::size_t i) {
  static constexpr std::string_view kSeparators[] = {
      "\u2018", "\u2019", "\u201a", "\u201b", "\u201c", "\u201d", "\u201e", "\u201f", "\u2013",
      "\u2014", "\u2026", "\u00a1", "\u00bf", "\u00a0", "\u00ab", "\u00bb", "\u2032", "\u2033"};
  for (std::string_view sep : kSeparators)
    if (t.compare(i, sep.size(), sep) == 0) return sep.size();
  return 0;
}

std::vector<std::string> words_of(std::string_view text) {
  std::vector<std::string> out;
  std::string cur;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c >= 0x80) {
      if (const std::size_t n = unicode_separator(text, i); n > 0) {
        if (!cur.empty()) out.push_back(std::move(cur));
        cur.clear();
        i += n - 1;
        continue;
      }
    }
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c >= 0x80) {
      cur += ch;
    } else if (c >= 'A' && c <= 'Z') {
      cur += static_cast<char>(c - 'A' + 'a');
    } else if (!cur.empty()) {
      out.push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

std::string strip_suffix(std::string w) {
  for (const char* suffix : {"ations", "ation", "ings", "ing", "ies", "ied", "ness", "ed", "es", "ly", "s"}) {
    const std::size_t n = std::strlen(suffix);
    if (w.size() > n + 2 && w.compare(w.size() - n, n, suffix) == 0) {
      w.resize(w.size() - n);
      break;
    }
  }
  return w;
}

// Emoji and other pictographs (U+1F000-U+1FAFF, UTF-8 F0 9F 80 80 to
// F0 9F AB BF) at s[i].
bool is_pictograph_at(std::string_view s, std::size_t i) {
  return i + 3 < s.size() && s[i] == '\xF0' && s[i + 1] == '\x9F' && static_cast<unsigned char>(s[i + 2]) <= 0xAB;
}

// The words of a question as chunks_fts reads them: its unicode61 tokenizer
// (remove_diacritics 2; MATCH applies the porter stage to each) through the
// FTS5 API of `db`, so lower case, diacritics removed, and nothing that it
// takes for a separator (punctuation, symbols, the emoji its Unicode tables
// know: U+1F600 once counted as a word that no chunk could contain). Emoji
// newer than those tables (U+1F3D6, U+1F970...) it takes for letters; a
// question's words are cut at every pictograph, so they are no words
// either (a chunk that holds one is still found by its other words).
Result<std::vector<std::string>> fts5_words(sqlite3* db, std::string_view text) {
  fts5_api* api = nullptr;
  {
    Stmt st(db, "SELECT fts5(?1)");
    if (!st.ok()) return sql::error(db, "FTS5 API");
    st.bind_pointer(1, static_cast<void*>(&api), "fts5_api_ptr");
    if (st.step() != SQLITE_ROW || api == nullptr) return sql::error(db, "FTS5 API");
  }
  fts5_tokenizer tokenizer;
  void* user_data = nullptr;
  if (api->xFindTokenizer(api, "unicode61", &user_data, &tokenizer) != SQLITE_OK)
    return internal_error("FTS5 has no unicode61 tokenizer");
  const char* args[] = {"remove_diacritics", "2"};
  Fts5Tokenizer* unicode61 = nullptr;
  if (tokenizer.xCreate(user_data, args, 2, &unicode61) != SQLITE_OK)
    return internal_error("FTS5: cannot create unicode61");
  std::vector<std::string> words;
  const auto on_token = [](void* out, int /*flags*/, const char* token, int n, int /*begin*/, int /*end*/) {
    auto* w = static_cast<std::vector<std::string>*>(out);
    const std::string_view t(token, static_cast<std::size_t>(n));
    std::size_t from = 0;
    for (std::size_t i = 0; i <= t.size(); ++i) {
      const bool pictograph = is_pictograph_at(t, i);
      if (i < t.size() && !pictograph) continue;
      if (i > from) w->emplace_back(t.substr(from, i - from));
      if (pictograph) i += 3;
      from = i + 1;
    }
    return SQLITE_OK;
  };
  text = text.substr(0, std::min<std::size_t>(text.size(), INT_MAX));
  const int rc =
      tokenizer.xTokenize(unicode61, &words, FTS5_TOKENIZE_QUERY, text.data(), static_cast<int>(text.size()), on_token);
  tokenizer.xDelete(unicode61);
  if (rc != SQLITE_OK) return internal_error("FTS5: tokenizing the question failed (" + std::to_string(rc) + ")");
  return words;
}

// The words of a question that carry its content (`words`: fts5_words()):
// stop words dropped, each once, at most 64. For the FTS query all of them
// are kept when nothing else is left (a search still ranks something); for
// term coverage not: a question of stop words only ("What is it?") has no
// term evidence, or every English chunk would cover it fully.
std::vector<std::string> query_words(const std::vector<std::string>& words, bool stop_words_if_nothing_else = true) {
  std::vector<std::string> kept;
  for (const std::string& w : words)
    if (!stop_words().count(w)) kept.push_back(w);
  if (kept.empty() && stop_words_if_nothing_else) kept = words;
  std::sort(kept.begin(), kept.end());
  kept.erase(std::unique(kept.begin(), kept.end()), kept.end());
  if (kept.size() > 64) kept.resize(64);
  return kept;
}

// An FTS5 query: the content words of the question OR-ed, each quoted so no
// FTS5 syntax from the user's text is interpreted.
std::string fts_query(const std::vector<std::string>& words) {
  std::string q;
  for (const std::string& w : query_words(words)) {
    if (!q.empty()) q += " OR ";
    q += '"' + w + '"';  // words hold no quotes
  }
  return q;
}

struct CollectionRow {
  std::int64_t id = 0;
  CollectionInfo info;
};

bool may_read(const CollectionInfo& c, const Principal& who) {
  if (who.admin || (!who.key.empty() && c.owner == who.key)) return true;
  for (const std::string& r : c.readers) {
    if (r == "*" && !who.key.empty()) return true;
    if (r.rfind("key:", 0) == 0 && !who.key.empty() && r.compare(4, std::string::npos, who.key) == 0) return true;
    if (r.rfind("group:", 0) == 0)
      for (const std::string& g : who.groups)
        if (r.compare(6, std::string::npos, g) == 0) return true;
  }
  return false;
}

bool may_write(const CollectionInfo& c, const Principal& who) {
  return who.admin || (!who.key.empty() && c.owner == who.key);
}

}  // namespace

Status check_source_name(std::string_view source) {
  if (source.empty() || source.size() > kMaxSourceBytes)
    return invalid_argument("document source name must be 1 to 1024 bytes");
  if (!printable_utf8(source)) return invalid_argument("document source name must be UTF-8 text without control characters");
  return Status();
}

std::vector<std::string> content_terms(std::string_view text) {
  std::vector<std::string> out;
  for (std::string& w : words_of(text)) {
    if (w.size() < 2 || stop_words().count(w)) continue;
    out.push_back(strip_suffix(std::move(w)));
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

struct Store::Impl {
  sqlite3* db = nullptr;  // writes (and the checks), serialised by write_mu
  // Reads go through read-only connections, so they never see a write in
  // progress, each used by one reader at a time (Reader). One connection
  // shared by every reader held its read transaction for as long as any
  // of their statements was open: with searches overlapping without a gap
  // it never moved to a newer snapshot (a deleted document still found, the
  // WAL never checkpointed). A reader's statements end with its lease, so
  // the next lease starts from the newest commit.
  std::string path;
  mutable std::mutex read_mu;
  mutable std::vector<sqlite3*> idle_readers;  // kept for the next lease, at most kMaxIdleReaders
  static constexpr std::size_t kMaxIdleReaders = 8;
  int dim = 0;
  std::string embedder_id;
  AnnOptions ann;
  mutable std::mutex write_mu;            // one writer at a time (and SQLite transactions never interleave)
  mutable std::shared_mutex index_mu;     // the vector indexes
  std::unordered_map<std::int64_t, std::unique_ptr<VectorIndex>> indexes;  // by collection id

  ~Impl() {
    for (sqlite3* r : idle_readers) sqlite3_close(r);
    if (db != nullptr) sqlite3_close(db);
  }

  // A read-only connection lent to one reader; back to the pool (its read
  // transaction ended) when the lease ends. Statements on it must end
  // first: declare them after the lease.
  class Reader {
   public:
    Reader(const Impl* s, sqlite3* db) : s_(s), db_(db) {}
    Reader(Reader&& o) noexcept : s_(o.s_), db_(std::exchange(o.db_, nullptr)) {}
    Reader& operator=(Reader&&) = delete;
    ~Reader() {
      if (db_ != nullptr) s_->give_back(db_);
    }
    sqlite3* get() const { return db_; }

   private:
    const Impl* s_;
    sqlite3* db_;
  };
  Result<Reader> reader() const {
    {
      std::lock_guard<std::mutex> lock(read_mu);
      if (!idle_readers.empty()) {
        sqlite3* r = idle_readers.back();
        idle_readers.pop_back();
        return Reader(this, r);
      }
    }
    sqlite3* r = nullptr;
    if (sqlite3_open_v2(path.c_str(), &r, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_NOMUTEX, nullptr) !=
        SQLITE_OK) {
      Status e = sql::error(r, "open " + path + " for reading");
      sqlite3_close(r);
      return e;
    }
    sqlite3_busy_timeout(r, 10000);
    return Reader(this, r);
  }
  void give_back(sqlite3* r) const {
    // A transaction a reader began (search) ends here, whatever happened.
    if (sqlite3_get_autocommit(r) == 0) sqlite3_exec(r, "ROLLBACK", nullptr, nullptr, nullptr);
    if (sqlite3_get_autocommit(r) == 0) {  // still in it: never lent again
      sqlite3_close(r);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(read_mu);
      if (idle_readers.size() < kMaxIdleReaders) {
        idle_readers.push_back(r);
        return;
      }
    }
    sqlite3_close(r);
  }

  // Every collection with its readers; with_counts adds document and chunk
  // counts (index lookups, but not needed on the search path). Read through
  // a reader's connection (one is leased when conn is null) unless the
  // caller holds write_mu and passes db: reads on the write connection
  // outside write_mu would see another thread's uncommitted transaction
  // (and be aborted by its rollback).
  Result<std::vector<CollectionRow>> collections(bool with_counts = true, sqlite3* conn = nullptr) const {
    std::optional<Reader> lease;
    if (conn == nullptr) {
      AIRLOCK_ASSIGN_OR_RETURN(Reader r, reader());
      lease.emplace(std::move(r));
      conn = lease->get();
    }
    std::vector<CollectionRow> out;
    std::map<std::int64_t, std::size_t> at;
    {
      Stmt st(conn, with_counts ? "SELECT c.id, c.name, c.owner, c.description, c.created_at,"
                                " (SELECT count(*) FROM documents d WHERE d.collection_id = c.id),"
                                " (SELECT count(*) FROM chunks k WHERE k.collection_id = c.id)"
                                " FROM collections c ORDER BY c.name"
                              : "SELECT c.id, c.name, c.owner, c.description, c.created_at, 0, 0"
                                " FROM collections c ORDER BY c.name");
      if (!st.ok()) return sql::error(conn, "list collections");
      int rc;
      while ((rc = st.step()) == SQLITE_ROW) {
        CollectionRow r;
        r.id = st.i64(0);
        r.info.name = st.text(1);
        r.info.owner = st.text(2);
        r.info.description = st.text(3);
        r.info.created_at = st.i64(4);
        r.info.n_documents = st.i64(5);
        r.info.n_chunks = st.i64(6);
        at[r.id] = out.size();
        out.push_back(std::move(r));
      }
      if (rc != SQLITE_DONE) return sql::error(conn, "list collections");
    }
    Stmt st(conn, "SELECT collection_id, principal FROM collection_readers ORDER BY principal");
    if (!st.ok()) return sql::error(conn, "list readers");
    int rc;
    while ((rc = st.step()) == SQLITE_ROW) {
      auto it = at.find(st.i64(0));
      if (it != at.end()) out[it->second].info.readers.push_back(st.text(1));
    }
    if (rc != SQLITE_DONE) return sql::error(conn, "list readers");
    return out;
  }

  // The collection `name` as `who` may see it: kNotFound when it does not
  // exist or `who` may not read it (its existence is not revealed).
  // Counts only when asked: they scan every collection's rows (~0.1 s at
  // two million chunks), and every document operation checks access.
  Result<CollectionRow> readable(const std::string& name, const Principal& who, sqlite3* conn = nullptr,
                                 bool with_counts = false) const {
    AIRLOCK_ASSIGN_OR_RETURN(std::vector<CollectionRow> all, collections(with_counts, conn));
    for (CollectionRow& r : all)
      if (r.info.name == name && may_read(r.info, who)) return std::move(r);
    return not_found("no collection '" + name + "'");
  }

  // Callers hold write_mu (check_writable, a check only, does not).
  Result<CollectionRow> writable(const std::string& name, const Principal& who, bool locked = true) const {
    AIRLOCK_ASSIGN_OR_RETURN(CollectionRow r, readable(name, who, locked ? db : nullptr));
    if (!may_write(r.info, who))
      return permission_denied("only the owner of collection '" + name + "' (or an admin) may change it");
    return r;
  }

  Result<std::vector<std::int64_t>> chunk_ids(const char* where, std::int64_t id) const {
    std::vector<std::int64_t> out;
    Stmt st(db, std::string("SELECT id FROM chunks WHERE ") + where + " = ?");
    if (!st.ok()) return sql::error(db, "list chunks");
    st.bind(1, id);
    int rc;
    while ((rc = st.step()) == SQLITE_ROW) out.push_back(st.i64(0));
    if (rc != SQLITE_DONE) return sql::error(db, "list chunks");
    return out;
  }

  // Runs `body` in one write transaction; rolls back on any error.
  template <typename F>
  Status transaction(F&& body) {
    AIRLOCK_RETURN_IF_ERROR(sql::exec(db, "BEGIN IMMEDIATE", "begin"));
    Status s;
    try {
      s = body();
    } catch (const std::exception& e) {  // bad_alloc, say: never leave the transaction open
      s = internal_error(std::string("RAG store write failed: ") + e.what());
    }
    if (s.is_ok()) s = sql::exec(db, "COMMIT", "commit");
    if (!s.is_ok()) sql::exec(db, "ROLLBACK", "rollback").ignore();
    return s;
  }

  Status load_vectors() {
    Stmt st(db, "SELECT id, collection_id, embedding FROM chunks ORDER BY id");
    if (!st.ok()) return sql::error(db, "load vectors");
    int rc;
    const std::size_t bytes = static_cast<std::size_t>(dim) * sizeof(float);
    std::vector<float> v(static_cast<std::size_t>(dim));
    while ((rc = st.step()) == SQLITE_ROW) {
      std::string_view b = st.blob(2);
      if (b.size() != bytes)
        return verification_failed("chunk " + std::to_string(st.i64(0)) + " has a vector of " +
                                   std::to_string(b.size()) + " bytes, expected " + std::to_string(bytes));
      std::memcpy(v.data(), b.data(), bytes);
      std::unique_ptr<VectorIndex>& index = indexes[st.i64(1)];
      if (!index) index = std::make_unique<VectorIndex>(dim, ann);
      AIRLOCK_RETURN_IF_ERROR(index->add(st.i64(0), v.data()));
    }
    if (rc != SQLITE_DONE) return sql::error(db, "load vectors");
    for (auto& [id, index] : indexes) index->maybe_build();  // in the background
    return Status();
  }
};

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Store::~Store() = default;
int Store::dim() const { return impl_->dim; }

const std::string& Store::embedder_id() const { return impl_->embedder_id; }

Result<std::unique_ptr<Store>> Store::open(const std::string& path, const std::string& embedder_id, int dim,
                                           const StoreOptions& options) {
  if (dim < 1 || dim > 65536) return invalid_argument("embedding dimension must be 1 to 65536");
  if (embedder_id.empty()) return invalid_argument("the embedding model needs an id");
  // Create the file ourselves so it is 0600 whatever the umask.
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return io_error("open " + path, errno);
  ::close(fd);
  auto impl = std::make_unique<Impl>();
  impl->dim = dim;
  impl->embedder_id = embedder_id;
  impl->ann.threshold = options.ann_threshold;
  impl->ann.m = options.hnsw_m;
  impl->ann.ef_construction = options.hnsw_ef_construction;
  impl->ann.ef_search = options.hnsw_ef_search;
  impl->ann.build_threads = options.hnsw_build_threads;
  if (sqlite3_open_v2(path.c_str(), &impl->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK)
    return sql::error(impl->db, "open " + path);
  sqlite3* db = impl->db;
  sqlite3_busy_timeout(db, 10000);
  AIRLOCK_RETURN_IF_ERROR(sql::exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
                                    "configure " + path));
  Status schema = impl->transaction([&]() -> Status {
    AIRLOCK_RETURN_IF_ERROR(sql::exec(db, kSchema, "create the RAG schema"));
    std::map<std::string, std::string> meta;
    {
      Stmt st(db, "SELECT key, value FROM meta");
      if (!st.ok()) return sql::error(db, "read meta");
      while (st.step() == SQLITE_ROW) meta[st.text(0)] = st.text(1);
    }
    const std::string want_dim = std::to_string(dim);
    if (meta.empty()) {
      Stmt st(db, "INSERT INTO meta (key, value) VALUES ('schema', ?), ('embedder', ?), ('dim', ?)");
      st.bind(1, std::to_string(kSchemaVersion)).bind(2, embedder_id).bind(3, want_dim);
      if (st.step() != SQLITE_DONE) return sql::error(db, "write meta");
      return Status();
    }
    if (meta["schema"] != std::to_string(kSchemaVersion))
      return verification_failed(path + " has RAG schema version '" + meta["schema"] + "'; this airlockd reads " +
                                 std::to_string(kSchemaVersion));
    if (meta["embedder"] != embedder_id || meta["dim"] != want_dim)
      return verification_failed(path + " holds vectors of embedding model " + meta["embedder"] + " (" + meta["dim"] +
                                 " dimensions), not of the loaded model " + embedder_id + " (" + want_dim +
                                 "); move it aside and ingest the documents again");
    return Status();
  });
  AIRLOCK_RETURN_IF_ERROR(schema);
  AIRLOCK_RETURN_IF_ERROR(impl->load_vectors());
  impl->path = path;
  {
    AIRLOCK_ASSIGN_OR_RETURN(Impl::Reader first, impl->reader());  // opens for reading now, or says why not
  }
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

Result<CollectionInfo> Store::create_collection(const std::string& name, const Principal& creator,
                                                const std::vector<std::string>& readers,
                                                const std::string& description) {
  if (!valid_collection_name(name))
    return invalid_argument("collection name must be 1-64 characters of [A-Za-z0-9._-], not starting with '.'");
  if (creator.key.empty()) return invalid_argument("a collection needs an owner (the caller's key)");
  if (readers.size() > kMaxReaders) return invalid_argument("at most 256 readers");
  for (const std::string& r : readers) {
    if (!valid_reader(r)) return invalid_argument("reader '" + r + "' is not key:NAME, group:NAME or *");
    // A reader's default searches (no collections named) include every
    // collection it may read, and the sources go into its system message:
    // a key that could name any reader could plant text there. So a key
    // that is not an admin may share only with groups it belongs to (the
    // admin made those) and name only itself; * and other keys are the
    // admins' to grant.
    if (creator.admin) continue;
    if (r == "*") return permission_denied("only an admin may make a collection readable by every key (*)");
    if (r.rfind("key:", 0) == 0 && r.substr(4) != creator.key)
      return permission_denied("only an admin may make a collection readable by another key ('" + r +
                               "'); share it with a group you belong to instead");
    if (r.rfind("group:", 0) == 0 &&
        std::find(creator.groups.begin(), creator.groups.end(), r.substr(6)) == creator.groups.end())
      return permission_denied("you may share a collection only with groups you belong to ('" + r + "')");
  }
  if (description.size() > 4096) return invalid_argument("description is longer than 4096 bytes");
  Impl& s = *impl_;
  std::lock_guard<std::mutex> lock(s.write_mu);
  const std::int64_t now = static_cast<std::int64_t>(std::time(nullptr));
  Status st = s.transaction([&]() -> Status {
    Stmt ins(s.db, "INSERT INTO collections (name, owner, description, created_at) VALUES (?, ?, ?, ?)");
    ins.bind(1, name).bind(2, creator.key).bind(3, description).bind(4, now);
    const int rc = ins.step();
    if (rc == SQLITE_CONSTRAINT) return already_exists("collection '" + name + "' exists");
    if (rc != SQLITE_DONE) return sql::error(s.db, "create collection");
    const std::int64_t id = sqlite3_last_insert_rowid(s.db);
    for (const std::string& r : std::set<std::string>(readers.begin(), readers.end())) {
      Stmt rd(s.db, "INSERT INTO collection_readers (collection_id, principal) VALUES (?, ?)");
      rd.bind(1, id).bind(2, r);
      if (rd.step() != SQLITE_DONE) return sql::error(s.db, "add reader");
    }
    return Status();
  });
  AIRLOCK_RETURN_IF_ERROR(st);
  AIRLOCK_ASSIGN_OR_RETURN(CollectionRow row, s.readable(name, creator));
  return row.info;
}

Result<std::vector<CollectionInfo>> Store::list_collections(const Principal& who) const {
  AIRLOCK_ASSIGN_OR_RETURN(std::vector<CollectionRow> all, impl_->collections());
  std::vector<CollectionInfo> out;
  for (CollectionRow& r : all)
    if (may_read(r.info, who)) out.push_back(std::move(r.info));
  return out;
}

Result<CollectionInfo> Store::get_collection(const std::string& name, const Principal& who) const {
  AIRLOCK_ASSIGN_OR_RETURN(CollectionRow r, impl_->readable(name, who, nullptr, /*with_counts=*/true));
  return r.info;
}

Status Store::delete_collection(const std::string& name, const Principal& who) {
  Impl& s = *impl_;
  std::lock_guard<std::mutex> lock(s.write_mu);
  AIRLOCK_ASSIGN_OR_RETURN(CollectionRow c, s.writable(name, who));
  Status st = s.transaction([&]() -> Status {
    // Chunks first, so the FTS delete trigger sees every row.
    Stmt del_chunks(s.db, "DELETE FROM chunks WHERE collection_id = ?");
    del_chunks.bind(1, c.id);
    if (del_chunks.step() != SQLITE_DONE) return sql::error(s.db, "delete chunks");
    Stmt del(s.db, "DELETE FROM collections WHERE id = ?");
    del.bind(1, c.id);
    if (del.step() != SQLITE_DONE) return sql::error(s.db, "delete collection");
    return Status();
  });
  AIRLOCK_RETURN_IF_ERROR(st);
  std::unique_lock<std::shared_mutex> ilock(s.index_mu);
  s.indexes.erase(c.id);
  return Status();
}

Result<PutResult> Store::put_document(const std::string& collection, const DocumentRecord& doc, const Principal& who) {
  AIRLOCK_RETURN_IF_ERROR(check_source_name(doc.source));
  if (!printable_utf8(doc.title, /*allow_newlines=*/false)) return invalid_argument("document title must be UTF-8 text");
  if (doc.content_hash.size() != 64) return invalid_argument("content_hash must be 64 hex digits (SHA-256)");
  if (doc.chunks.empty()) return invalid_argument("a document needs at least one chunk");
  if (doc.chunks.size() > kMaxChunksPerDocument) return invalid_argument("too many chunks in one document");
  if (doc.metadata_json.size() > kMaxMetadataBytes) return invalid_argument("metadata is larger than 64 KiB");
  {
    nlohmann::json m = nlohmann::json::parse(doc.metadata_json, nullptr, /*allow_exceptions=*/false);
    if (!m.is_object()) return invalid_argument("metadata must be a JSON object");
  }
  Impl& s = *impl_;
  for (const ChunkRecord& c : doc.chunks) {
    if (c.embedding.size() != static_cast<std::size_t>(s.dim))
      return invalid_argument("a chunk vector has " + std::to_string(c.embedding.size()) + " dimensions, the store " +
                              std::to_string(s.dim));
    for (float f : c.embedding)
      if (!std::isfinite(f)) return invalid_argument("a chunk vector holds a non-finite value");
  }
  std::lock_guard<std::mutex> lock(s.write_mu);
  AIRLOCK_ASSIGN_OR_RETURN(CollectionRow c, s.writable(collection, who));
  PutResult result;
  std::vector<std::int64_t> removed, added;
  Status st = s.transaction([&]() -> Status {
    std::optional<std::int64_t> existing;
    {
      Stmt find(s.db, "SELECT id, content_hash, metadata FROM documents WHERE collection_id = ? AND source = ?");
      find.bind(1, c.id).bind(2, doc.source);
      if (find.step() == SQLITE_ROW) {
        existing = find.i64(0);
        if (find.text(1) == doc.content_hash && find.text(2) == doc.metadata_json) {
          result.outcome = PutOutcome::kUnchanged;
          result.document_id = *existing;
          return Status();
        }
      }
    }
    // New content under a new name that another document already holds is
    // a duplicate; new content for an existing name replaces it even so
    // (keeping the old text would leave it searchable and citable).
    if (!existing) {
      Stmt dup(s.db, "SELECT source FROM documents WHERE collection_id = ? AND content_hash = ? AND source != ? LIMIT 1");
      dup.bind(1, c.id).bind(2, doc.content_hash).bind(3, doc.source);
      if (dup.step() == SQLITE_ROW) {
        result.outcome = PutOutcome::kDuplicate;
        result.duplicate_of = dup.text(0);
        return Status();
      }
    }
    const std::int64_t now = static_cast<std::int64_t>(std::time(nullptr));
    if (existing) {
      AIRLOCK_ASSIGN_OR_RETURN(removed, s.chunk_ids("document_id", *existing));
      Stmt del(s.db, "DELETE FROM chunks WHERE document_id = ?");
      del.bind(1, *existing);
      if (del.step() != SQLITE_DONE) return sql::error(s.db, "delete old chunks");
      Stmt up(s.db,
              "UPDATE documents SET content_hash = ?, format = ?, title = ?, metadata = ?, owner = ?,"
              " ingested_at = ?, n_bytes = ? WHERE id = ?");
      up.bind(1, doc.content_hash).bind(2, doc.format).bind(3, doc.title).bind(4, doc.metadata_json);
      up.bind(5, doc.owner).bind(6, now).bind(7, doc.n_bytes).bind(8, *existing);
      if (up.step() != SQLITE_DONE) return sql::error(s.db, "update document");
      result.outcome = PutOutcome::kReplaced;
      result.document_id = *existing;
    } else {
      // A document id is never reused, as a chunk id is not (a citation's
      // document_id names one document for good): meta's 'document_ids'
      // holds the highest id given, deleted documents' included. (The
      // table predates this: its ids are plain rowids, which SQLite gives
      // again after the highest is deleted; stores made before it may
      // have given some id twice.)
      Stmt next(s.db,
                "SELECT MAX(COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'document_ids'), 0),"
                " COALESCE((SELECT MAX(id) FROM documents), 0)) + 1");
      if (next.step() != SQLITE_ROW) return sql::error(s.db, "next document id");
      const std::int64_t id = next.i64(0);
      Stmt ins(s.db,
               "INSERT INTO documents (id, collection_id, source, content_hash, format, title, metadata, owner,"
               " ingested_at, n_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
      ins.bind(1, id).bind(2, c.id).bind(3, doc.source).bind(4, doc.content_hash).bind(5, doc.format);
      ins.bind(6, doc.title).bind(7, doc.metadata_json).bind(8, doc.owner).bind(9, now).bind(10, doc.n_bytes);
      if (ins.step() != SQLITE_DONE) return sql::error(s.db, "insert document");
      Stmt issued(s.db,
                  "INSERT INTO meta (key, value) VALUES ('document_ids', ?)"
                  " ON CONFLICT(key) DO UPDATE SET value = excluded.value");
      issued.bind(1, std::to_string(id));
      if (issued.step() != SQLITE_DONE) return sql::error(s.db, "record document id");
      result.outcome = PutOutcome::kAdded;
      result.document_id = id;
    }
    Stmt ins(s.db,
             "INSERT INTO chunks (document_id, collection_id, position, begin_byte, end_byte, n_tokens, text, embedding)"
             " VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
    if (!ins.ok()) return sql::error(s.db, "prepare chunk insert");
    for (std::size_t i = 0; i < doc.chunks.size(); ++i) {
      const ChunkRecord& ch = doc.chunks[i];
      ins.reset();
      ins.bind(1, result.document_id).bind(2, c.id).bind(3, static_cast<std::int64_t>(i)).bind(4, ch.begin);
      ins.bind(5, ch.end).bind(6, ch.n_tokens).bind(7, ch.text);
      ins.bind_blob(8, ch.embedding.data(), ch.embedding.size() * sizeof(float));
      if (ins.step() != SQLITE_DONE) return sql::error(s.db, "insert chunk");
      added.push_back(sqlite3_last_insert_rowid(s.db));
    }
    return Status();
  });
  if (!st.is_ok()) return st;
  if (added.empty() && removed.empty()) return result;
  // Committed: bring the vector index along.
  {
    std::unique_lock<std::shared_mutex> ilock(s.index_mu);
    std::unique_ptr<VectorIndex>& index = s.indexes[c.id];
    if (!index) index = std::make_unique<VectorIndex>(s.dim, s.ann);
  }
  // The map is only read from here (write_mu keeps this collection's entry
  // alive): searches in other collections, and between single inserts in
  // this one, go on meanwhile.
  std::shared_lock<std::shared_mutex> ilock(s.index_mu);
  VectorIndex& index = *s.indexes.at(c.id);
  for (std::int64_t id : removed) index.remove(id);
  for (std::size_t i = 0; i < added.size(); ++i) index.add(added[i], doc.chunks[i].embedding.data()).ignore();
  index.maybe_build();
  return result;
}

namespace {

DocumentInfo document_from(const Stmt& st, const std::string& collection) {
  DocumentInfo d;
  d.id = st.i64(0);
  d.collection = collection;
  d.source = st.text(1);
  d.content_hash = st.text(2);
  d.format = st.text(3);
  d.title = st.text(4);
  d.metadata_json = st.text(5);
  d.owner = st.text(6);
  d.ingested_at = st.i64(7);
  d.n_bytes = st.i64(8);
  d.n_chunks = st.i64(9);
  return d;
}

constexpr const char* kDocumentColumns =
    "SELECT d.id, d.source, d.content_hash, d.format, d.title, d.metadata, d.owner, d.ingested_at, d.n_bytes,"
    " (SELECT count(*) FROM chunks k WHERE k.document_id = d.id) FROM documents d WHERE d.collection_id = ?";

}  // namespace

Result<std::vector<DocumentInfo>> Store::list_documents(const std::string& collection, const Principal& who) const {
  AIRLOCK_ASSIGN_OR_RETURN(Impl::Reader lease, impl_->reader());
  sqlite3* const rdb = lease.get();
  AIRLOCK_ASSIGN_OR_RETURN(CollectionRow c, impl_->readable(collection, who, rdb));
  Stmt st(rdb, std::string(kDocumentColumns) + " ORDER BY d.source");
  if (!st.ok()) return sql::error(rdb, "list documents");
  st.bind(1, c.id);
  std::vector<DocumentInfo> out;
  int rc;
  while ((rc = st.step()) == SQLITE_ROW) out.push_back(document_from(st, collection));
  if (rc != SQLITE_DONE) return sql::error(rdb, "list documents");
  return out;
}

Result<std::optional<DocumentInfo>> Store::find_document(const std::string& collection, const std::string& source,
                                                         const Principal& who) const {
  AIRLOCK_ASSIGN_OR_RETURN(Impl::Reader lease, impl_->reader());
  sqlite3* const rdb = lease.get();
  AIRLOCK_ASSIGN_OR_RETURN(CollectionRow c, impl_->readable(collection, who, rdb));
  Stmt st(rdb, std::string(kDocumentColumns) + " AND d.source = ?");
  if (!st.ok()) return sql::error(rdb, "find document");
  st.bind(1, c.id).bind(2, source);
  const int rc = st.step();
  if (rc == SQLITE_ROW) return std::optional<DocumentInfo>(document_from(st, collection));
  if (rc != SQLITE_DONE) return sql::error(rdb, "find document");
  return std::optional<DocumentInfo>();
}

Status Store::delete_document(const std::string& collection, const std::string& source, const Principal& who) {
  Impl& s = *impl_;
  std::lock_guard<std::mutex> lock(s.write_mu);
  AIRLOCK_ASSIGN_OR_RETURN(CollectionRow c, s.writable(collection, who));
  std::vector<std::int64_t> removed;
  Status st = s.transaction([&]() -> Status {
    std::int64_t id = 0;
    {
      Stmt find(s.db, "SELECT id FROM documents WHERE collection_id = ? AND source = ?");
      find.bind(1, c.id).bind(2, source);
      if (find.step() != SQLITE_ROW) return not_found("no document '" + source + "' in collection '" + collection + "'");
      id = find.i64(0);
    }
    AIRLOCK_ASSIGN_OR_RETURN(removed, s.chunk_ids("document_id", id));
    Stmt del_chunks(s.db, "DELETE FROM chunks WHERE document_id = ?");
    del_chunks.bind(1, id);
    if (del_chunks.step() != SQLITE_DONE) return sql::error(s.db, "delete chunks");
    Stmt del(s.db, "DELETE FROM documents WHERE id = ?");
    del.bind(1, id);
    if (del.step() != SQLITE_DONE) return sql::error(s.db, "delete document");
    return Status();
  });
  AIRLOCK_RETURN_IF_ERROR(st);
  std::shared_lock<std::shared_mutex> ilock(s.index_mu);
  auto it = s.indexes.find(c.id);
  if (it != s.indexes.end()) {
    for (std::int64_t id : removed) it->second->remove(id);
    it->second->maybe_build();
  }
  return Status();
}

Status Store::check_writable(const std::string& collection, const Principal& who) const {
  Result<CollectionRow> c = impl_->writable(collection, who, /*locked=*/false);
  return c.is_ok() ? Status() : c.status();
}

Result<std::optional<std::string>> Store::source_with_hash(const std::string& collection, const std::string& content_hash,
                                                           const Principal& who) const {
  AIRLOCK_ASSIGN_OR_RETURN(Impl::Reader lease, impl_->reader());
  sqlite3* const rdb = lease.get();
  AIRLOCK_ASSIGN_OR_RETURN(CollectionRow c, impl_->readable(collection, who, rdb));
  Stmt st(rdb, "SELECT source FROM documents WHERE collection_id = ? AND content_hash = ? ORDER BY source LIMIT 1");
  if (!st.ok()) return sql::error(rdb, "find by hash");
  st.bind(1, c.id).bind(2, content_hash);
  const int rc = st.step();
  if (rc == SQLITE_ROW) return std::optional<std::string>(st.text(0));
  if (rc != SQLITE_DONE) return sql::error(rdb, "find by hash");
  return std::optional<std::string>();
}

Result<std::vector<SearchHit>> Store::search(const SearchRequest& req, const Principal& who) const {
  const Impl& s = *impl_;
  // One snapshot for the whole search (the lease ends its transaction).
  AIRLOCK_ASSIGN_OR_RETURN(Impl::Reader lease, s.reader());
  sqlite3* const rdb = lease.get();
  AIRLOCK_RETURN_IF_ERROR(sql::exec(rdb, "BEGIN", "begin a search"));
  if (req.top_k < 1 || req.top_k > 100) return invalid_argument("top_k must be 1 to 100");
  const int candidates = std::clamp(req.candidates, req.top_k, 1000);
  const bool use_bm25 = req.mode != SearchMode::kVector;
  const bool use_vectors = req.mode != SearchMode::kBm25;
  // A NaN would make the ranking's comparisons inconsistent (undefined
  // behaviour in std::sort); chunk vectors are checked the same way.
  if (use_vectors && !std::all_of(req.query_vector.begin(), req.query_vector.end(), [](float x) { return std::isfinite(x); }))
    return invalid_argument("the query vector has a value that is not finite");
  if (use_vectors && req.query_vector.size() != static_cast<std::size_t>(s.dim))
    return invalid_argument("the query vector has " + std::to_string(req.query_vector.size()) +
                            " dimensions, the store " + std::to_string(s.dim));

  // The collections this caller may read, narrowed to the ones asked for.
  AIRLOCK_ASSIGN_OR_RETURN(std::vector<CollectionRow> all, s.collections(/*with_counts=*/false, rdb));
  std::map<std::int64_t, std::string> allowed;
  if (req.collections.empty()) {
    for (const CollectionRow& r : all)
      if (may_read(r.info, who)) allowed[r.id] = r.info.name;
  } else {
    for (const std::string& name : req.collections) {
      auto it = std::find_if(all.begin(), all.end(), [&](const CollectionRow& r) { return r.info.name == name; });
      if (it == all.end() || !may_read(it->info, who)) return not_found("no collection '" + name + "'");
      allowed[it->id] = name;
    }
  }
  if (allowed.empty()) return std::vector<SearchHit>();

  AIRLOCK_ASSIGN_OR_RETURN(const std::vector<std::string> words_in_query, fts5_words(rdb, req.query));
  std::map<std::int64_t, SearchHit> hits;  // by chunk id
  if (use_bm25) {
    const std::string match = fts_query(words_in_query);
    if (!match.empty()) {
      std::string in;
      for (const auto& [id, name] : allowed) in += (in.empty() ? "" : ",") + std::to_string(id);
      // The collection filter is part of the ranked query, not applied after it.
      Stmt st(rdb,
              "SELECT chunks_fts.rowid, bm25(chunks_fts) AS score FROM chunks_fts"
              " JOIN chunks ON chunks.id = chunks_fts.rowid"
              " WHERE chunks_fts MATCH ? AND chunks.collection_id IN (" + in + ")"
              " ORDER BY score, chunks_fts.rowid LIMIT ?");
      if (!st.ok()) return sql::error(rdb, "BM25 search");
      st.bind(1, match).bind(2, static_cast<std::int64_t>(candidates));
      int rc, rank = 0;
      while ((rc = st.step()) == SQLITE_ROW) {
        SearchHit& h = hits[st.i64(0)];
        h.chunk_id = st.i64(0);
        h.bm25_rank = ++rank;
        h.bm25 = st.f64(1);
      }
      if (rc != SQLITE_DONE) return sql::error(rdb, "BM25 search");
    }
  }
  if (use_vectors) {
    std::vector<std::pair<std::int64_t, float>> found;
    {
      std::shared_lock<std::shared_mutex> ilock(s.index_mu);
      for (const auto& [id, name] : allowed) {
        auto it = s.indexes.find(id);
        if (it == s.indexes.end()) continue;
        auto part = it->second->search(req.query_vector.data(), static_cast<std::size_t>(candidates));
        found.insert(found.end(), part.begin(), part.end());
      }
    }
    std::sort(found.begin(), found.end(),
              [](const auto& a, const auto& b) { return a.second > b.second || (a.second == b.second && a.first < b.first); });
    if (found.size() > static_cast<std::size_t>(candidates)) found.resize(static_cast<std::size_t>(candidates));
    int rank = 0;
    for (const auto& [id, sim] : found) {
      SearchHit& h = hits[id];
      h.chunk_id = id;
      h.vector_rank = ++rank;
      h.similarity = sim;
    }
  }
  // Reciprocal-rank fusion; with one retriever it keeps that retriever's order.
  std::vector<SearchHit> ranked;
  ranked.reserve(hits.size());
  for (auto& [id, h] : hits) {
    h.score = (h.bm25_rank ? 1.0 / (kRrfK + *h.bm25_rank) : 0.0) + (h.vector_rank ? 1.0 / (kRrfK + *h.vector_rank) : 0.0);
    ranked.push_back(std::move(h));
  }
  std::sort(ranked.begin(), ranked.end(), [](const SearchHit& a, const SearchHit& b) {
    return a.score > b.score || (a.score == b.score && a.chunk_id < b.chunk_id);
  });
  if (ranked.size() > static_cast<std::size_t>(req.top_k)) ranked.resize(static_cast<std::size_t>(req.top_k));

  // Fill in the text and provenance of the winners.
  Stmt st(rdb,
          "SELECT k.document_id, k.position, k.begin_byte, k.end_byte, k.text, k.embedding, d.source, d.title,"
          " k.collection_id FROM chunks k JOIN documents d ON d.id = k.document_id WHERE k.id = ?");
  if (!st.ok()) return sql::error(rdb, "read chunk");
  std::vector<SearchHit> kept;
  for (SearchHit& h : ranked) {
    st.reset();
    st.bind(1, h.chunk_id);
    const int rc = st.step();
    // A vector of a chunk deleted since the index was read, or a chunk of a
    // collection that changed hands meanwhile: not a result.
    if (rc == SQLITE_DONE || (rc == SQLITE_ROW && !allowed.count(st.i64(8)))) continue;
    if (rc != SQLITE_ROW) return sql::error(rdb, "read chunk " + std::to_string(h.chunk_id));
    h.document_id = st.i64(0);
    h.position = st.i64(1);
    h.begin = st.i64(2);
    h.end = st.i64(3);
    h.text = st.text(4);
    h.source = st.text(6);
    h.title = st.text(7);
    h.collection = allowed.at(st.i64(8));
    if (use_vectors && !h.similarity) {
      std::string_view b = st.blob(5);
      if (b.size() == req.query_vector.size() * sizeof(float)) {
        double dot = 0;
        for (std::size_t i = 0; i < req.query_vector.size(); ++i) {
          float x;
          std::memcpy(&x, b.data() + i * sizeof(float), sizeof x);
          dot += static_cast<double>(x) * req.query_vector[i];
        }
        h.similarity = dot;
      }
    }
    kept.push_back(std::move(h));
  }
  ranked.swap(kept);
  // Term coverage: for each content word of the question, which hits the
  // FTS5 index (Porter-stemmed, as BM25 sees them) says contain it.
  const std::vector<std::string> words = query_words(words_in_query, /*stop_words_if_nothing_else=*/false);
  if (!ranked.empty() && !words.empty()) {
    std::string ids;
    std::map<std::int64_t, std::size_t> at;
    for (std::size_t i = 0; i < ranked.size(); ++i) {
      ids += (ids.empty() ? "" : ",") + std::to_string(ranked[i].chunk_id);
      at[ranked[i].chunk_id] = i;
    }
    std::vector<std::size_t> found(ranked.size(), 0);
    Stmt cov(rdb, "SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? AND rowid IN (" + ids + ")");
    if (!cov.ok()) return sql::error(rdb, "term coverage");
    for (const std::string& w : words) {
      cov.reset();
      cov.bind(1, "\"" + w + "\"");
      int rc;
      while ((rc = cov.step()) == SQLITE_ROW) ++found[at[cov.i64(0)]];
      if (rc != SQLITE_DONE) return sql::error(rdb, "term coverage");
    }
    for (std::size_t i = 0; i < ranked.size(); ++i)
      ranked[i].term_coverage = static_cast<double>(found[i]) / static_cast<double>(words.size());
  }
  return ranked;
}

void Store::wait_for_index() const {
  std::shared_lock<std::shared_mutex> ilock(impl_->index_mu);
  for (const auto& [id, index] : impl_->indexes) index->wait_for_build();
}

Result<ConsistencyReport> Store::check() const {
  const Impl& s = *impl_;
  std::lock_guard<std::mutex> lock(s.write_mu);
  ConsistencyReport r;
  {
    Stmt st(s.db, "PRAGMA integrity_check");
    if (st.step() != SQLITE_ROW) return sql::error(s.db, "integrity_check");
    if (st.text(0) != "ok") {
      r.why = "integrity_check: " + st.text(0);
      return r;
    }
  }
  {
    Stmt st(s.db, "PRAGMA foreign_key_check");
    if (st.step() == SQLITE_ROW) {
      r.why = "foreign_key_check: a row of " + st.text(0) + " points at a missing parent";
      return r;
    }
  }
  // FTS5 compares its index with the content table (rank 1: external content too).
  if (Status fts = sql::exec(s.db, "INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)",
                             "FTS5 integrity-check");
      !fts.is_ok()) {
    r.why = fts.message();
    return r;
  }
  {
    Stmt st(s.db, "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks),"
                  " (SELECT count(*) FROM chunks WHERE length(embedding) != ?),"
                  " (SELECT count(*) FROM documents d WHERE NOT EXISTS (SELECT 1 FROM chunks k WHERE k.document_id = d.id))");
    st.bind(1, static_cast<std::int64_t>(s.dim) * 4);
    if (st.step() != SQLITE_ROW) return sql::error(s.db, "count rows");
    r.n_documents = st.i64(0);
    r.n_chunks = st.i64(1);
    if (st.i64(2) != 0) {
      r.why = std::to_string(st.i64(2)) + " chunks have a vector of the wrong size";
      return r;
    }
    if (st.i64(3) != 0) {
      r.why = std::to_string(st.i64(3)) + " documents have no chunks";
      return r;
    }
  }
  std::shared_lock<std::shared_mutex> ilock(s.index_mu);
  for (const auto& [id, index] : s.indexes) {
    r.n_vectors += static_cast<std::int64_t>(index->size());
    r.n_hnsw_collections += index->uses_ann() ? 1 : 0;
  }
  if (r.n_vectors != r.n_chunks) {
    r.why = "the vector index holds " + std::to_string(r.n_vectors) + " vectors for " + std::to_string(r.n_chunks) + " chunks";
    return r;
  }
  Stmt st(s.db, "SELECT id, collection_id FROM chunks");
  while (st.step() == SQLITE_ROW) {
    auto it = s.indexes.find(st.i64(1));
    if (it == s.indexes.end() || !it->second->contains(st.i64(0))) {
      r.why = "chunk " + std::to_string(st.i64(0)) + " is missing from the vector index";
      return r;
    }
  }
  r.ok = true;
  return r;
}

}  // namespace airlock::rag
