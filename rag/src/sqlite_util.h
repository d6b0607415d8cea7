// A thin RAII layer over the SQLite C API for the store (SQLite handles
// never leave rag/). Errors become kIoError naming the statement's purpose.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "airlock/common/status.h"

namespace airlock::rag::sql {

inline Status error(sqlite3* db, std::string_view what) {
  return Status(StatusCode::kIoError, std::string(what) + ": " + (db ? sqlite3_errmsg(db) : "out of memory"));
}

inline Status exec(sqlite3* db, const char* statement, std::string_view what) {
  char* err = nullptr;
  if (sqlite3_exec(db, statement, nullptr, nullptr, &err) != SQLITE_OK) {
    Status s(StatusCode::kIoError, std::string(what) + ": " + (err ? err : "failed"));
    sqlite3_free(err);
    return s;
  }
  return Status();
}

class Stmt {
 public:
  Stmt(sqlite3* db, std::string_view statement) : db_(db) {
    if (sqlite3_prepare_v2(db, statement.data(), static_cast<int>(statement.size()), &st_, nullptr) != SQLITE_OK)
      st_ = nullptr;
  }
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  bool ok() const { return st_ != nullptr; }
  Stmt& bind(int i, std::int64_t v) {
    sqlite3_bind_int64(st_, i, v);
    return *this;
  }
  Stmt& bind(int i, double v) {
    sqlite3_bind_double(st_, i, v);
    return *this;
  }
  Stmt& bind(int i, std::string_view v) {
    sqlite3_bind_text(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& bind_blob(int i, const void* p, std::size_t n) {
    sqlite3_bind_blob(st_, i, p, static_cast<int>(n), SQLITE_TRANSIENT);
    return *this;
  }
  // A pointer of SQLite's pointer-passing interface (`type` names it), for
  // a function that takes one, e.g. fts5(): not owned, not freed.
  Stmt& bind_pointer(int i, void* p, const char* type) {
    sqlite3_bind_pointer(st_, i, p, type, nullptr);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int step() { return st_ ? sqlite3_step(st_) : SQLITE_ERROR; }
  void reset() {
    sqlite3_reset(st_);
    sqlite3_clear_bindings(st_);
  }
  std::int64_t i64(int col) const { return sqlite3_column_int64(st_, col); }
  double f64(int col) const { return sqlite3_column_double(st_, col); }
  std::string text(int col) const {
    const unsigned char* p = sqlite3_column_text(st_, col);
    return p ? std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(sqlite3_column_bytes(st_, col)))
             : std::string();
  }
  std::string_view blob(int col) const {
    const void* p = sqlite3_column_blob(st_, col);
    return p ? std::string_view(static_cast<const char*>(p), static_cast<std::size_t>(sqlite3_column_bytes(st_, col)))
             : std::string_view();
  }
  bool is_null(int col) const { return sqlite3_column_type(st_, col) == SQLITE_NULL; }

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
};

}  // namespace airlock::rag::sql
