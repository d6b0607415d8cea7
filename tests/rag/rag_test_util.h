// Test helpers for rag/: a deterministic embedding model (feature hashing of
// content words, so texts sharing words are close) and a temporary directory.
#pragma once

#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "airlock/rag/embedder.h"
#include "airlock/rag/store.h"

namespace airlock::rag::testing {

class HashEmbedder final : public Embedder {
 public:
  explicit HashEmbedder(int dim = 64, std::string id = "hash-64") : dim_(dim), id_(std::move(id)) {}
  std::string model_id() const override { return id_; }
  int dim() const override { return dim_; }
  std::size_t count_tokens(std::string_view text) const override {
    std::size_t n = 0;
    bool in_word = false;
    for (char c : text) {
      const bool space = c == ' ' || c == '\n' || c == '\t';
      if (!space && !in_word) ++n;
      in_word = !space;
    }
    return n;
  }
  std::vector<float> one(std::string_view text) const {
    std::vector<float> v(static_cast<std::size_t>(dim_), 0.0f);
    for (const std::string& t : content_terms(text)) {
      std::uint64_t h = 1469598103934665603ull;
      for (char c : t) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
      v[h % static_cast<std::uint64_t>(dim_)] += (h >> 63) ? 1.0f : -1.0f;
    }
    double norm = 0;
    for (float x : v) norm += static_cast<double>(x) * x;
    if (norm == 0) {
      v[0] = 1;
      return v;
    }
    for (float& x : v) x = static_cast<float>(x / std::sqrt(norm));
    return v;
  }
  std::vector<std::vector<float>> embed(std::span<const std::string> texts) const override {
    std::vector<std::vector<float>> out;
    for (const std::string& t : texts) out.push_back(one(t));
    return out;
  }

 private:
  int dim_;
  std::string id_;
};

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "airlock-rag-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace airlock::rag::testing
