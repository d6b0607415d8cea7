// The daemon's adapter from the engine's embedding models to rag::Embedder:
// [rag] query_prefix / document_prefix reach the model in front of
// questions and chunks, the document prefix is part of the store's model
// id, and every vector comes out at unit length. And documents chunked by
// the token counts of real tokenizers (WordPiece, byte-level BPE), as the
// daemon chunks them: CJK text too is cut at sentence ends and fills the
// budget.
#include "rag_embedder.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "airlock/engine/gguf.h"
#include "airlock/engine/tokenizer.h"
#include "airlock/rag/chunker.h"

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

std::string models_dir() {
  const char* d = std::getenv("AIRLOCK_MODELS_DIR");
  return d ? d : "";
}

// Chunks of `text` at `budget` tokens of `tok`, each checked to be a
// slice within the budget; the fill of every chunk but the last, in
// tokens, goes to *fills.
std::vector<rag::TextChunk> chunk_with(const engine::Tokenizer& tok, const std::string& text, std::size_t budget,
                                       std::vector<double>* fills) {
  rag::ChunkOptions o;
  o.max_tokens = budget;
  o.overlap_tokens = budget / 8;
  Result<std::vector<rag::TextChunk>> r =
      rag::chunk_text(text, [&](std::string_view t) { return tok.encode(t, false, false).size(); }, o);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  if (!r.is_ok()) return {};
  for (std::size_t i = 0; i < r->size(); ++i) {
    const rag::TextChunk& c = (*r)[i];
    EXPECT_EQ(c.text, text.substr(c.begin, c.end - c.begin));
    EXPECT_LE(c.n_tokens, budget);
    if (i + 1 < r->size()) fills->push_back(static_cast<double>(c.n_tokens) / static_cast<double>(budget));
  }
  return std::move(r).value();
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

// Chinese and Japanese documents chunked with the bge WordPiece vocabulary
// (a token per Han character) and GPT-2's byte-level BPE (several per
// character): every chunk ends at a sentence end, and chunks are about as
// full as whole sentences allow (they were cut anywhere, at about two
// thirds of the budget). A paragraph without a sentence end fills it.
TEST(RagChunkingTest, CjkDocumentsWithRealTokenizers) {
  const std::string chinese =
      "飞机机翼的形状决定了升力的大小。当气流流过机翼上表面时，速度加快，压力降低。边界层是紧贴物体表面的一层薄薄的空气。"
      "如果迎角过大，气流就会从机翼表面分离，导致失速。为什么高空飞行更省油？因为空气稀薄，阻力更小！"
      "工程师说：“结冰会严重破坏机翼前缘的升力。”喷气发动机通过向后高速喷出燃气来产生推力。";
  const std::string japanese =
      "飛行機の翼は揚力を生み出す。「迎角が大きすぎると失速します。」と教官は言った。"
      "境界層は物体の表面に沿って流れる薄い空気の層です。なぜ高高度では燃費が良いのでしょうか？"
      "空気が薄く、抵抗が小さいからです！着氷は翼の前縁で揚力を大きく損なう（特に冬季に）。";
  std::string run;
  for (int i = 0; i < 150; ++i) run += "边界层是紧贴物体表面的一层薄薄的空气";
  for (const char* vocab : {"ggml-vocab-bert-bge.gguf", "ggml-vocab-gpt-2.gguf"}) {
    SCOPED_TRACE(vocab);
    const std::string path = models_dir() + "/tokenizers/llama.cpp-vocab/" + vocab;
    if (models_dir().empty() || !std::ifstream(path)) GTEST_SKIP() << path << " not found (AIRLOCK_MODELS_DIR)";
    auto file = engine::GgufFile::open(path);
    ASSERT_TRUE(file.is_ok()) << file.status().to_string();
    auto tok = engine::Tokenizer::from_gguf(**file);
    ASSERT_TRUE(tok.is_ok()) << tok.status().to_string();
    for (const std::string* sentences : {&chinese, &japanese}) {
      std::string text;
      for (int i = 0; i < 12; ++i) text += *sentences + (i % 3 == 2 ? "\n\n" : "");
      std::vector<double> fills;
      const std::vector<rag::TextChunk> chunks = chunk_with(**tok, text, 256, &fills);
      ASSERT_GT(chunks.size(), 2u);
      for (const rag::TextChunk& c : chunks)
        EXPECT_TRUE(c.text.ends_with("。") || c.text.ends_with("！") || c.text.ends_with("？") ||
                    c.text.ends_with("」") || c.text.ends_with("”"))
            << c.text;
      EXPECT_GT(mean(fills), 0.8) << chunks.size() << " chunks";
    }
    std::vector<double> fills;
    ASSERT_GT(chunk_with(**tok, run, 256, &fills).size(), 2u);
    for (double f : fills) EXPECT_GE(f, 0.95);
  }
}

}  // namespace
}  // namespace airlock::daemon
