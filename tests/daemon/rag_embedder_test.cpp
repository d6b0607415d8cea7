// The daemon's adapter from the engine's embedding models to rag::Embedder:
// [rag] query_prefix / document_prefix reach the model in front of
// questions and chunks, the document prefix is part of the store's model
// id, and every vector comes out at unit length.
#include "rag_embedder.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "airlock/engine/tokenizer.h"

namespace airlock::daemon {
namespace {

// Records the texts it is given; each vector is (length, 1, 0, ...): not
// unit length, distinct per text length.
class FakeModel final : public engine::Embedder {
 public:
  FakeModel() {
    engine::TokenizerSpec s;
    s.model = "gpt2";
    s.pre = "gpt-2";
    s.tokens = {"a", "b"};
    auto t = engine::Tokenizer::from_spec(std::move(s));
    EXPECT_TRUE(t.is_ok());
    if (t.is_ok()) tokenizer_ = std::move(t).value();
  }
  int dim() const override { return 4; }
  std::size_t max_tokens() const override { return 512; }
  const engine::Tokenizer& tokenizer() const override { return *tokenizer_; }
  std::string_view kind() const override { return "fake"; }
  std::vector<float> embed(std::string_view text) const override {
    std::lock_guard lock(mu_);
    seen_.emplace_back(text);
    return {static_cast<float>(text.size()), 1.0f, 0.0f, 0.0f};
  }
  std::vector<std::string> seen() const {
    std::lock_guard lock(mu_);
    return seen_;
  }

 private:
  std::unique_ptr<engine::Tokenizer> tokenizer_;
  mutable std::mutex mu_;
  mutable std::vector<std::string> seen_;
};

double length(const std::vector<float>& v) {
  double n = 0;
  for (float x : v) n += static_cast<double>(x) * x;
  return std::sqrt(n);
}

TEST(RagEmbedderTest, PrefixesReachTheModelAndTheDocumentOneNamesTheStore) {
  FakeModel model;
  RagEmbedder plain(model, "sha256:abc");
  EXPECT_EQ(plain.model_id(), "sha256:abc");
  const std::vector<std::string> chunks = {"first chunk", "second"};
  std::vector<std::vector<float>> v = plain.embed(chunks);
  ASSERT_EQ(v.size(), 2u);
  EXPECT_NEAR(length(v[0]), 1.0, 1e-6);
  EXPECT_NEAR(length(plain.embed_query("why?")), 1.0, 1e-6);
  EXPECT_EQ(model.seen(), (std::vector<std::string>{"first chunk", "second", "why?"}));

  FakeModel model2;
  RagEmbedder instructed(model2, "sha256:abc", "search_query: ", "search_document: ");
  (void)instructed.embed(chunks);
  (void)instructed.embed_query("why?");
  EXPECT_EQ(model2.seen(), (std::vector<std::string>{"search_document: first chunk", "search_document: second",
                                                      "search_query: why?"}));
  // Vectors made with a document prefix go to a store of their own; the
  // query prefix changes no stored vector.
  EXPECT_NE(instructed.model_id(), plain.model_id());
  EXPECT_EQ(instructed.model_id().rfind("sha256:abc+document_prefix:sha256:", 0), 0u) << instructed.model_id();
  EXPECT_NE(RagEmbedder(model2, "sha256:abc", "", "passage: ").model_id(), instructed.model_id());
  EXPECT_EQ(RagEmbedder(model2, "sha256:abc", "query: ", "").model_id(), plain.model_id());
}

}  // namespace
}  // namespace airlock::daemon
