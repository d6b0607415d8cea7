// The RAG store: collections and their readers, documents replaced and
// deleted everywhere (FTS and vectors), hybrid search filtered by access
// during the search, ANN recall against exact search, persistence, the
// consistency check, and a SIGKILL in the middle of writes.
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <thread>

#include "airlock/rag/chunker.h"
#include "airlock/rag/grounding.h"
#include "airlock/rag/ingest.h"
#include "airlock/rag/store.h"
#include "rag_test_util.h"

namespace airlock::rag {
namespace {

const testing::HashEmbedder kEmbedder;

// A document from text: chunks of `max_tokens` words embedded by kEmbedder.
DocumentRecord doc(const std::string& source, const std::string& text, std::size_t max_tokens = 30) {
  DocumentRecord d;
  d.source = source;
  d.content_hash = sha256_hex(text);
  d.format = "text";
  d.owner = "alice";
  d.n_bytes = static_cast<std::int64_t>(text.size());
  ChunkOptions o;
  o.max_tokens = max_tokens;
  o.overlap_tokens = 0;
  auto chunks = chunk_text(text, [](std::string_view t) { return kEmbedder.count_tokens(t); }, o);
  EXPECT_TRUE(chunks.is_ok());
  for (const TextChunk& c : *chunks) {
    ChunkRecord r;
    r.text = c.text;
    r.begin = static_cast<std::int64_t>(c.begin);
    r.end = static_cast<std::int64_t>(c.end);
    r.n_tokens = static_cast<std::int64_t>(c.n_tokens);
    r.embedding = kEmbedder.one(c.text);
    d.chunks.push_back(std::move(r));
  }
  return d;
}

Principal key(const std::string& name, std::vector<std::string> groups = {}) { return Principal{name, std::move(groups), false}; }

SearchRequest query(const std::string& q, SearchMode mode = SearchMode::kHybrid, int top_k = 5,
                    std::vector<std::string> collections = {}) {
  SearchRequest r;
  r.query = q;
  if (mode != SearchMode::kBm25) r.query_vector = kEmbedder.one(q);
  r.mode = mode;
  r.top_k = top_k;
  r.collections = std::move(collections);
  return r;
}

std::set<std::string> sources(const std::vector<SearchHit>& hits) {
  std::set<std::string> out;
  for (const SearchHit& h : hits) out.insert(h.source);
  return out;
}

class StoreTest : public ::testing::Test {
 protected:
  std::unique_ptr<Store> open(StoreOptions o = {}) {
    auto s = Store::open(dir / "rag.db", kEmbedder.model_id(), kEmbedder.dim(), o);
    EXPECT_TRUE(s.is_ok()) << s.status().to_string();
    return s.is_ok() ? std::move(*s) : nullptr;
  }
  void expect_consistent(const Store& s) {
    Result<ConsistencyReport> r = s.check();
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    EXPECT_TRUE(r->ok) << r->why;
  }
  testing::TempDir dir;
  Principal alice = key("alice");
};

TEST_F(StoreTest, CollectionsAndReaders) {
  auto s = open();
  const Principal alice_ops = key("alice", {"ops"}), root{"root", {}, true};
  ASSERT_TRUE(s->create_collection("manuals", alice_ops, {"key:alice", "group:ops"}, "aircraft manuals").is_ok());
  ASSERT_TRUE(s->create_collection("hr", alice, {}, "").is_ok());
  // Only an admin may open a collection to every key, or to another key;
  // others share with groups they belong to (a reader's default searches
  // cover what it may read: no key may plant text there).
  EXPECT_EQ(s->create_collection("public", key("carol"), {"*"}, "").status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(s->create_collection("x", alice_ops, {"key:bob"}, "").status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(s->create_collection("x", alice_ops, {"group:finance"}, "").status().code(), StatusCode::kPermissionDenied);
  ASSERT_TRUE(s->create_collection("public", Principal{"carol", {}, true}, {"*"}, "").is_ok());
  ASSERT_TRUE(s->create_collection("briefs", root, {"key:bob", "group:finance"}, "").is_ok());
  EXPECT_EQ(s->create_collection("hr", alice, {}, "").status().code(), StatusCode::kAlreadyExists);
  for (const std::string& bad : std::vector<std::string>{"", ".hidden", "has space", "a/b", std::string(65, 'x')})
    EXPECT_EQ(s->create_collection(bad, alice, {}, "").status().code(), StatusCode::kInvalidArgument) << bad;
  EXPECT_EQ(s->create_collection("x", alice, {"bob"}, "").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s->create_collection("x", key(""), {}, "").status().code(), StatusCode::kInvalidArgument);

  auto names = [&](const Principal& p) {
    std::vector<std::string> out;
    Result<std::vector<CollectionInfo>> all = s->list_collections(p);
    for (const CollectionInfo& c : *all) out.push_back(c.name);
    return out;
  };
  EXPECT_EQ(names(alice), (std::vector<std::string>{"hr", "manuals", "public"}));
  EXPECT_EQ(names(key("bob")), (std::vector<std::string>{"briefs", "public"}));
  EXPECT_EQ(names(key("dave", {"ops"})), (std::vector<std::string>{"manuals", "public"}));
  EXPECT_EQ(names(key("eve")), (std::vector<std::string>{"public"}));
  EXPECT_EQ(names(root), (std::vector<std::string>{"briefs", "hr", "manuals", "public"}));
  // Existence is not revealed to those who may not read.
  EXPECT_EQ(s->get_collection("hr", key("eve")).status().code(), StatusCode::kNotFound);
  // Readers may not change a collection; strangers do not see it.
  const Principal dave = key("dave", {"ops"});
  EXPECT_EQ(s->delete_collection("manuals", dave).code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(s->delete_collection("hr", key("eve")).code(), StatusCode::kNotFound);
  EXPECT_EQ(s->put_document("manuals", doc("a.txt", "some text here."), dave).status().code(),
            StatusCode::kPermissionDenied);
  Result<CollectionInfo> m = s->get_collection("manuals", dave);
  ASSERT_TRUE(m.is_ok());
  EXPECT_EQ(m->owner, "alice");
  EXPECT_EQ(m->readers, (std::vector<std::string>{"group:ops", "key:alice"}));
}

TEST_F(StoreTest, PutReplaceDuplicateDelete) {
  auto s = open();
  ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
  Result<PutResult> a = s->put_document("c", doc("wing.txt", "The wing flutter speed depends on torsional stiffness."), alice);
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  EXPECT_EQ(a->outcome, PutOutcome::kAdded);
  EXPECT_EQ(s->put_document("c", doc("wing.txt", "The wing flutter speed depends on torsional stiffness."), alice)->outcome,
            PutOutcome::kUnchanged);
  Result<PutResult> dup = s->put_document("c", doc("copy.txt", "The wing flutter speed depends on torsional stiffness."), alice);
  EXPECT_EQ(dup->outcome, PutOutcome::kDuplicate);
  EXPECT_EQ(dup->duplicate_of, "wing.txt");
  ASSERT_TRUE(s->put_document("c", doc("heat.txt", "Heat transfer in hypersonic boundary layers."), alice).is_ok());

  auto hits = s->search(query("torsional stiffness"), alice);
  ASSERT_TRUE(hits.is_ok());
  ASSERT_FALSE(hits->empty());
  EXPECT_EQ((*hits)[0].source, "wing.txt");
  EXPECT_TRUE((*hits)[0].bm25_rank.has_value());
  EXPECT_TRUE((*hits)[0].vector_rank.has_value());
  EXPECT_DOUBLE_EQ((*hits)[0].term_coverage, 1.0);

  // Replacing the content replaces every index entry of the old text.
  Result<PutResult> r = s->put_document("c", doc("wing.txt", "Propeller noise at low advance ratios."), alice);
  EXPECT_EQ(r->outcome, PutOutcome::kReplaced);
  EXPECT_EQ(r->document_id, a->document_id);
  for (SearchMode mode : {SearchMode::kBm25, SearchMode::kVector, SearchMode::kHybrid}) {
    auto after = s->search(query("torsional stiffness flutter", mode), alice);
    ASSERT_TRUE(after.is_ok());
    for (const SearchHit& h : *after) EXPECT_EQ(h.text.find("torsional"), std::string::npos);
  }
  auto noise = s->search(query("propeller noise", SearchMode::kBm25), alice);
  ASSERT_EQ(noise->size(), 1u);
  EXPECT_EQ((*noise)[0].source, "wing.txt");
  expect_consistent(*s);

  // An existing name given another document's content is replaced too (a
  // duplicate only for a new name): its old text must not stay searchable.
  Result<PutResult> same = s->put_document("c", doc("heat-copy.txt", "Heat transfer in hypersonic boundary layers."), alice);
  EXPECT_EQ(same->outcome, PutOutcome::kDuplicate);
  ASSERT_TRUE(s->put_document("c", doc("old.txt", "Laminar separation bubbles on airfoils."), alice).is_ok());
  Result<PutResult> moved = s->put_document("c", doc("old.txt", "Heat transfer in hypersonic boundary layers."), alice);
  EXPECT_EQ(moved->outcome, PutOutcome::kReplaced);
  Result<std::vector<SearchHit>> laminar = s->search(query("laminar separation bubbles", SearchMode::kBm25), alice);
  ASSERT_TRUE(laminar.is_ok());
  for (const SearchHit& h : *laminar) EXPECT_EQ(h.text.find("Laminar"), std::string::npos) << h.source;
  ASSERT_TRUE(s->delete_document("c", "old.txt", alice).is_ok());
  expect_consistent(*s);

  ASSERT_TRUE(s->delete_document("c", "wing.txt", alice).is_ok());
  EXPECT_EQ(s->delete_document("c", "wing.txt", alice).code(), StatusCode::kNotFound);
  // A document id is never given again, not even the highest one's after
  // its deletion (an old citation must not name a new document), also
  // after the store is opened again.
  Result<PutResult> last = s->put_document("c", doc("last.txt", "Vortex shedding behind bluff bodies."), alice);
  ASSERT_TRUE(last.is_ok());
  ASSERT_TRUE(s->delete_document("c", "last.txt", alice).is_ok());
  Result<PutResult> after_last = s->put_document("c", doc("next.txt", "Shock tube measurements of ignition."), alice);
  ASSERT_TRUE(after_last.is_ok());
  EXPECT_GT(after_last->document_id, last->document_id);
  ASSERT_TRUE(s->delete_document("c", "next.txt", alice).is_ok());
  s.reset();
  s = open();
  Result<PutResult> reopened = s->put_document("c", doc("again.txt", "Transition on swept wings."), alice);
  ASSERT_TRUE(reopened.is_ok());
  EXPECT_GT(reopened->document_id, after_last->document_id);
  ASSERT_TRUE(s->delete_document("c", "again.txt", alice).is_ok());
  for (SearchMode mode : {SearchMode::kBm25, SearchMode::kVector, SearchMode::kHybrid}) {
    auto after = s->search(query("propeller noise", mode), alice);
    ASSERT_TRUE(after.is_ok());
    EXPECT_EQ(sources(*after).count("wing.txt"), 0u);
  }
  auto docs = s->list_documents("c", alice);
  ASSERT_EQ(docs->size(), 1u);
  EXPECT_EQ((*docs)[0].source, "heat.txt");
  EXPECT_EQ((*docs)[0].n_chunks, 1);
  expect_consistent(*s);

  ASSERT_TRUE(s->delete_collection("c", alice).is_ok());
  EXPECT_TRUE(s->list_collections(alice)->empty());
  expect_consistent(*s);
}

TEST_F(StoreTest, BadDocumentsAreRefusedWithoutWriting) {
  auto s = open();
  ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
  DocumentRecord d = doc("a.txt", "Some text about flow.");
  DocumentRecord wrong_dim = d;
  wrong_dim.chunks[0].embedding.resize(3);
  DocumentRecord nan = d;
  nan.chunks[0].embedding[0] = std::nanf("");
  DocumentRecord bad_meta = d;
  bad_meta.metadata_json = "[1,2]";
  DocumentRecord no_chunks = d;
  no_chunks.chunks.clear();
  DocumentRecord bad_hash = d;
  bad_hash.content_hash = "abc";
  DocumentRecord no_source = d;
  no_source.source = "";
  DocumentRecord bad_utf8 = d;
  bad_utf8.source = "a\xff.txt";
  DocumentRecord control = d;
  control.source = "a\x1b[2J.txt";
  DocumentRecord c1 = d;
  c1.source = "a\xc2\x9b.txt";
  for (const DocumentRecord* bad : {&wrong_dim, &nan, &bad_meta, &no_chunks, &bad_hash, &no_source, &bad_utf8, &control, &c1})
    EXPECT_EQ(s->put_document("c", *bad, alice).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s->put_document("nope", d, alice).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(s->list_documents("c", alice)->empty());
  expect_consistent(*s);
}

TEST_F(StoreTest, AccessIsFilteredDuringTheSearchNotAfterTopK) {
  auto s = open();
  ASSERT_TRUE(s->create_collection("open", key("alice", {"team"}), {"group:team"}, "").is_ok());
  ASSERT_TRUE(s->create_collection("secret", alice, {}, "").is_ok());
  // The secret collection matches the query far better, many times over.
  for (int i = 0; i < 20; ++i)
    ASSERT_TRUE(s->put_document("secret", doc("s" + std::to_string(i) + ".txt",
                                              "Shock wave interaction shock wave interaction report " + std::to_string(i) + "."),
                                alice)
                    .is_ok());
  for (int i = 0; i < 5; ++i)
    ASSERT_TRUE(s->put_document("open", doc("o" + std::to_string(i) + ".txt",
                                            "A note on wave drag number " + std::to_string(i) + " and other things."),
                                alice)
                    .is_ok());
  for (SearchMode mode : {SearchMode::kBm25, SearchMode::kVector, SearchMode::kHybrid}) {
    SearchRequest r = query("shock wave interaction", mode, 3);
    r.candidates = 3;  // tighter than the secret matches: post-filtering would leave nothing
    auto bob = s->search(r, key("bob", {"team"}));
    ASSERT_TRUE(bob.is_ok());
    ASSERT_EQ(bob->size(), 3u) << "mode " << static_cast<int>(mode);
    for (const SearchHit& h : *bob) EXPECT_EQ(h.collection, "open");
    auto al = s->search(r, alice);
    EXPECT_EQ((*al)[0].collection, "secret");
  }
  // Naming a collection one may not read is "not found", as if it did not exist.
  EXPECT_EQ(s->search(query("shock", SearchMode::kHybrid, 3, {"secret"}), key("bob", {"team"})).status().code(),
            StatusCode::kNotFound);
  EXPECT_TRUE(s->search(query("shock"), key("eve"))->empty());
}

TEST_F(StoreTest, CurlyQuotesSeparateWordsAsFts5Does) {
  auto s = open();
  ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
  ASSERT_TRUE(s->put_document("c", doc("h.txt", "The employee's handbook lists leave rules."), alice).is_ok());
  auto hits = s->search(query("employee\u2019s handbook", SearchMode::kBm25), alice);
  ASSERT_EQ(hits->size(), 1u);
  EXPECT_DOUBLE_EQ((*hits)[0].term_coverage, 1.0);
}

// Term coverage counts a question's words as FTS5 reads them. Emoji and
// other symbols, which its unicode61 tokenizer drops, are no words: "leave
// \U0001F600" once had coverage 0.5 (a "no evidence" handoff) while
// "leave \u00bf" was covered. Letters outside ASCII stay words, folded as
// the index folds them.
TEST_F(StoreTest, SymbolsAndEmojiInAQuestionAreNotWords) {
  auto s = open();
  ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
  ASSERT_TRUE(s->put_document("c", doc("h.txt", "Annual leave is 28 days for every employee."), alice).is_ok());
  ASSERT_TRUE(s->put_document("c", doc("f.txt", "Le caf\u00e9 est ferm\u00e9 le lundi."), alice).is_ok());
  for (const std::string q : {"leave", "leave \U0001F600", "leave \u00bf", "leave \u2605 \u20ac \u2192 \u00a9",
                              "\U0001F600leave\U0001F44D", "Leave!!! \u2764\ufe0f", "\U0001F3D6\ufe0f leave?"}) {
    for (SearchMode mode : {SearchMode::kBm25, SearchMode::kHybrid}) {
      auto hits = s->search(query(q, mode), alice);
      ASSERT_TRUE(hits.is_ok()) << q << ": " << hits.status().to_string();
      auto leave = std::find_if(hits->begin(), hits->end(), [](const SearchHit& h) { return h.source == "h.txt"; });
      ASSERT_NE(leave, hits->end()) << q;
      EXPECT_DOUBLE_EQ(leave->term_coverage, 1.0) << q;
      EXPECT_TRUE(assess_evidence({*leave}, GroundingPolicy{}).sufficient) << q;
    }
  }
  for (const std::string q : {"caf\u00e9 ferm\u00e9", "cafe ferme", "CAF\u00c9 \U0001F600 FERM\u00c9"}) {
    auto hits = s->search(query(q, SearchMode::kBm25), alice);
    ASSERT_TRUE(hits.is_ok()) << q;
    ASSERT_EQ(hits->size(), 1u) << q;
    EXPECT_DOUBLE_EQ((*hits)[0].term_coverage, 1.0) << q;
  }
  // Symbols only: no words, so nothing to match and no term evidence.
  auto none = s->search(query("\U0001F600 \u2605 \u00bf", SearchMode::kBm25), alice);
  ASSERT_TRUE(none.is_ok()) << none.status().to_string();
  EXPECT_TRUE(none->empty());
}

// A question of stop words only still finds something to rank, but its
// hits have no term evidence: "What is it?" is not covered by every
// English chunk that says "what", "is" and "it".
TEST_F(StoreTest, AQuestionOfStopWordsOnlyHasNoTermCoverage) {
  auto s = open();
  ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
  ASSERT_TRUE(s->put_document("c", doc("m.txt", "What it is: the memo says leave is granted in May."), alice).is_ok());
  auto hits = s->search(query("What is it?", SearchMode::kBm25), alice);
  ASSERT_TRUE(hits.is_ok());
  ASSERT_EQ(hits->size(), 1u);
  EXPECT_DOUBLE_EQ((*hits)[0].term_coverage, 0.0);
  auto content = s->search(query("What is the leave memo?", SearchMode::kBm25), alice);
  ASSERT_EQ(content->size(), 1u);
  EXPECT_DOUBLE_EQ((*content)[0].term_coverage, 1.0);
}

TEST_F(StoreTest, ReplacedDocumentsDoNotGrowTheIndexForever) {
  StoreOptions o;
  o.ann_threshold = 200;
  auto s = open(o);
  ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
  std::string base;
  for (int k = 0; k < 60; ++k) base += "Line " + std::to_string(k) + " about wing flutter and panels.\n";
  ASSERT_TRUE(s->put_document("c", doc("keep.txt", base, 6), alice).is_ok());
  // Replace one document 40 times: 40 x 60 removed rows against 120 live ones.
  for (int round = 0; round < 40; ++round) {
    std::string text;
    for (int k = 0; k < 60; ++k) text += "Round " + std::to_string(round) + " line " + std::to_string(k) + " on nozzles.\n";
    ASSERT_TRUE(s->put_document("c", doc("churn.txt", text, 6), alice).is_ok());
  }
  s->wait_for_index();
  expect_consistent(*s);
  // Only the live rows answer, and the latest version of the churned document.
  auto hits = s->search(query("round 39 nozzles", SearchMode::kVector, 10), alice);
  ASSERT_TRUE(hits.is_ok());
  for (const SearchHit& h : *hits)
    if (h.source == "churn.txt") {
      EXPECT_NE(h.text.find("Round 39"), std::string::npos) << h.text;
    }
  auto exact = s->search(query("Round 39 line 7 on nozzles", SearchMode::kBm25, 1), alice);
  ASSERT_EQ(exact->size(), 1u);
  EXPECT_EQ((*exact)[0].source, "churn.txt");
}

TEST_F(StoreTest, HostileQueriesAreJustWords) {
  auto s = open();
  ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
  ASSERT_TRUE(s->put_document("c", doc("a.txt", "Laminar flow over a flat plate."), alice).is_ok());
  for (const std::string& q : std::vector<std::string>{"\"unbalanced", "flow OR", "NEAR(flow plate)", "col:flow", "* ^ - + ()", "",
                              std::string(100000, 'a'), "flow\"; DROP TABLE chunks; --", "\xff\xfe flow"}) {
    auto r = s->search(query(q, SearchMode::kBm25), alice);
    ASSERT_TRUE(r.is_ok()) << q.substr(0, 40) << ": " << r.status().to_string();
  }
  EXPECT_EQ(s->search(query("flow\"; DROP TABLE chunks; --", SearchMode::kBm25), alice)->size(), 1u);
  SearchRequest bad = query("flow");
  bad.query_vector.resize(5);
  EXPECT_EQ(s->search(bad, alice).status().code(), StatusCode::kInvalidArgument);
  bad = query("flow");
  bad.top_k = 0;
  EXPECT_EQ(s->search(bad, alice).status().code(), StatusCode::kInvalidArgument);
  for (float x : {std::nanf(""), std::numeric_limits<float>::infinity()}) {
    for (SearchMode mode : {SearchMode::kHybrid, SearchMode::kVector}) {
      bad = query("flow", mode);
      bad.query_vector[1] = x;  // a NaN would break the ranking's sort
      EXPECT_EQ(s->search(bad, alice).status().code(), StatusCode::kInvalidArgument);
    }
  }
  expect_consistent(*s);
}

TEST_F(StoreTest, PersistsAndRefusesAnotherEmbeddingModel) {
  {
    auto s = open();
    ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
    ASSERT_TRUE(s->put_document("c", doc("a.txt", "Supersonic inlet buzz."), alice).is_ok());
  }
  {
    auto s = open();
    auto hits = s->search(query("inlet buzz"), alice);
    ASSERT_EQ(hits->size(), 1u);
    EXPECT_TRUE((*hits)[0].vector_rank.has_value());
    expect_consistent(*s);
  }
  auto other = Store::open(dir / "rag.db", "another-model", kEmbedder.dim());
  EXPECT_EQ(other.status().code(), StatusCode::kVerificationFailed);
  EXPECT_NE(other.status().message().find("ingest the documents again"), std::string::npos);
  EXPECT_EQ(Store::open(dir / "rag.db", kEmbedder.model_id(), 32).status().code(), StatusCode::kVerificationFailed);
}

TEST_F(StoreTest, CheckFindsAnFtsIndexOutOfStep) {
  auto s = open();
  ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
  ASSERT_TRUE(s->put_document("c", doc("a.txt", "Supersonic inlet buzz."), alice).is_ok());
  s.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir / "rag.db").c_str(), &db), SQLITE_OK);
  // Drop the FTS entry behind the store's back.
  ASSERT_EQ(sqlite3_exec(db, "INSERT INTO chunks_fts(chunks_fts, rowid, text) SELECT 'delete', id, 'unrelated words' FROM chunks",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  s = open();
  Result<ConsistencyReport> r = s->check();
  ASSERT_TRUE(r.is_ok());
  EXPECT_FALSE(r->ok);
  EXPECT_NE(r->why.find("FTS5"), std::string::npos) << r->why;
}

TEST_F(StoreTest, AnnRecallAgainstExactSearch) {
  StoreOptions o;
  o.ann_threshold = 1000;
  auto s = open(o);
  ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
  // 4000 chunks of random words: vectors spread over the space.
  std::mt19937 rng(7);
  std::vector<std::string> vocab;
  for (int i = 0; i < 3000; ++i) vocab.push_back("w" + std::to_string(i));
  std::uniform_int_distribution<int> pick(0, 2999);
  std::vector<std::vector<float>> all_vectors;  // every chunk's vector, for the brute-force reference
  for (int d = 0; d < 100; ++d) {
    std::string text;
    for (int c = 0; c < 40; ++c) {
      for (int w = 0; w < 8; ++w) text += vocab[pick(rng)] + " ";
      text += "end.\n";
    }
    DocumentRecord rec = doc("d" + std::to_string(d), text, 9);
    for (const ChunkRecord& c : rec.chunks) all_vectors.push_back(c.embedding);
    ASSERT_TRUE(s->put_document("c", rec, alice).is_ok());
  }
  expect_consistent(*s);
  s->wait_for_index();
  EXPECT_EQ(s->check()->n_hnsw_collections, 1);
  double recall = 0;
  const int n_queries = 50;
  for (int q = 0; q < n_queries; ++q) {
    std::string text;
    for (int w = 0; w < 6; ++w) text += vocab[pick(rng)] + " ";
    SearchRequest r = query(text, SearchMode::kVector, 10);
    r.candidates = 10;
    auto ann = s->search(r, alice);
    ASSERT_TRUE(ann.is_ok());
    ASSERT_EQ(ann->size(), 10u);
    std::vector<double> sims;
    for (const std::vector<float>& v : all_vectors) {
      double dot = 0;
      for (std::size_t i = 0; i < v.size(); ++i) dot += static_cast<double>(v[i]) * r.query_vector[i];
      sims.push_back(dot);
    }
    std::nth_element(sims.begin(), sims.begin() + 9, sims.end(), std::greater<double>());
    const double tenth = sims[9];
    int good = 0;
    for (const SearchHit& h : *ann) good += *h.similarity >= tenth - 1e-5;
    recall += good / 10.0;
  }
  recall /= n_queries;
  EXPECT_GE(recall, 0.95);
}

// An embedding model that fails (empty vectors) is the server's fault, not
// the document's: kInternal (500), not kInvalidArgument (400 invalid
// document), and nothing is written.
// Vectors of another model of the same dimension are refused at ingest,
// as they are when the store is opened.
TEST_F(StoreTest, IngestRefusesAnotherEmbeddingModel) {
  auto s = open();
  ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
  struct Other final : Embedder {
    std::string model_id() const override { return "other-model"; }
    int dim() const override { return kEmbedder.dim(); }
    std::size_t count_tokens(std::string_view t) const override { return kEmbedder.count_tokens(t); }
    std::vector<std::vector<float>> embed(std::span<const std::string> t) const override { return kEmbedder.embed(t); }
  } other;
  Result<IngestResult> r = ingest_document(*s, other, "c", "a.txt", "Shock waves in nozzles.", "{}", alice);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("other-model"), std::string::npos) << r.status().to_string();
  EXPECT_TRUE(s->list_documents("c", alice)->empty());
  EXPECT_TRUE(ingest_document(*s, kEmbedder, "c", "a.txt", "Shock waves in nozzles.", "{}", alice).is_ok());
}

TEST_F(StoreTest, AFailingEmbeddingModelIsNotABadDocument) {
  auto s = open();
  ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
  struct Failing final : Embedder {
    std::string model_id() const override { return kEmbedder.model_id(); }
    int dim() const override { return kEmbedder.dim(); }
    std::size_t count_tokens(std::string_view t) const override { return kEmbedder.count_tokens(t); }
    std::vector<std::vector<float>> embed(std::span<const std::string> t) const override {
      return std::vector<std::vector<float>>(t.size());
    }
  } failing;
  Result<IngestResult> r = ingest_document(*s, failing, "c", "a.txt", "Shock waves in nozzles.", "{}", alice);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal) << r.status().to_string();
  EXPECT_TRUE(s->list_documents("c", alice)->empty());
}

// Through ingest_document (which checks for known content before it
// extracts anything): new content under a new name already held by another
// document is a duplicate, but an existing name given that content is
// replaced, its old text gone.
TEST_F(StoreTest, IngestReplacesAnExistingNameEvenWithAnothersContent) {
  auto s = open();
  ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
  struct Counting final : Embedder {  // kEmbedder, counting the texts it embeds
    mutable int texts = 0;
    std::string model_id() const override { return kEmbedder.model_id(); }
    int dim() const override { return kEmbedder.dim(); }
    std::size_t count_tokens(std::string_view t) const override { return kEmbedder.count_tokens(t); }
    std::vector<std::vector<float>> embed(std::span<const std::string> t) const override {
      texts += static_cast<int>(t.size());
      return kEmbedder.embed(t);
    }
  } counting;
  auto put = [&](const std::string& source, const std::string& text) {
    Result<IngestResult> r = ingest_document(*s, counting, "c", source, text, "{}", alice);
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r.is_ok() ? r->put.outcome : PutOutcome::kUnchanged;
  };
  EXPECT_EQ(put("a.txt", "Shock waves in supersonic nozzles."), PutOutcome::kAdded);
  EXPECT_EQ(put("b.txt", "Boundary layer transition on flat plates."), PutOutcome::kAdded);
  EXPECT_EQ(put("c.txt", "Shock waves in supersonic nozzles."), PutOutcome::kDuplicate);
  EXPECT_EQ(put("b.txt", "Shock waves in supersonic nozzles."), PutOutcome::kReplaced);
  Result<std::optional<DocumentInfo>> b = s->find_document("c", "b.txt", alice);
  ASSERT_TRUE(b.is_ok() && b->has_value());
  EXPECT_EQ((*b)->content_hash, sha256_hex("Shock waves in supersonic nozzles."));
  Result<std::vector<SearchHit>> old = s->search(query("boundary layer transition", SearchMode::kBm25), alice);
  ASSERT_TRUE(old.is_ok());
  EXPECT_TRUE(old->empty());
  // Two documents hold that content now; either sent again unchanged is
  // answered without extracting or embedding anything.
  const int embedded = counting.texts;
  EXPECT_EQ(put("b.txt", "Shock waves in supersonic nozzles."), PutOutcome::kUnchanged);
  EXPECT_EQ(put("a.txt", "Shock waves in supersonic nozzles."), PutOutcome::kUnchanged);
  EXPECT_EQ(counting.texts, embedded);
  // The same bytes with new metadata replace it too: the metadata is not
  // dropped as "unchanged".
  Result<IngestResult> tagged = ingest_document(*s, counting, "c", "a.txt", "Shock waves in supersonic nozzles.",
                                                R"({"dept":"aero"})", alice);
  ASSERT_TRUE(tagged.is_ok()) << tagged.status().to_string();
  EXPECT_EQ(tagged->put.outcome, PutOutcome::kReplaced);
  EXPECT_EQ((*s->find_document("c", "a.txt", alice))->metadata_json, R"({"dept":"aero"})");
  Result<IngestResult> again = ingest_document(*s, counting, "c", "a.txt", "Shock waves in supersonic nozzles.",
                                               R"({"dept":"aero"})", alice);
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ(again->put.outcome, PutOutcome::kUnchanged);
  // No metadata given with the same bytes: unchanged, the metadata kept.
  Result<IngestResult> bare = ingest_document(*s, counting, "c", "a.txt", "Shock waves in supersonic nozzles.", "", alice);
  ASSERT_TRUE(bare.is_ok());
  EXPECT_EQ(bare->put.outcome, PutOutcome::kUnchanged);
  EXPECT_EQ((*s->find_document("c", "a.txt", alice))->metadata_json, R"({"dept":"aero"})");
  expect_consistent(*s);
}

// Listings and the duplicate check read committed data only: while another
// thread's put_document is inside its transaction, a reader sees the
// document with all of its chunks or not at all (before, they read the
// write connection, and saw its uncommitted rows: a half-inserted chunk
// count, or a duplicate of a document whose transaction then rolled back).
TEST_F(StoreTest, ReadersNeverSeeAWriteInProgress) {
  auto s = open();
  ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
  std::string text;
  for (int i = 0; i < 3000; ++i) text += "Sentence " + std::to_string(i) + " on boundary layer transition. ";
  const DocumentRecord big = doc("big.txt", text, 8);
  ASSERT_GT(big.chunks.size(), 1000u);
  std::atomic<bool> done{false};
  std::atomic<int> reads{0}, partial{0};
  std::thread reader([&] {
    while (!done.load()) {
      Result<std::vector<DocumentInfo>> docs = s->list_documents("c", alice);
      ASSERT_TRUE(docs.is_ok()) << docs.status().to_string();
      for (const DocumentInfo& d : *docs)
        if (d.n_chunks != static_cast<std::int64_t>(big.chunks.size())) ++partial;
      Result<std::optional<std::string>> holder = s->source_with_hash("c", big.content_hash, alice);
      ASSERT_TRUE(holder.is_ok()) << holder.status().to_string();
      ++reads;
    }
  });
  for (int round = 0; round < 3; ++round) {
    EXPECT_TRUE(s->put_document("c", big, alice).is_ok());
    EXPECT_TRUE(s->delete_document("c", "big.txt", alice).is_ok());
  }
  done = true;
  reader.join();
  EXPECT_GT(reads.load(), 0);
  EXPECT_EQ(partial.load(), 0) << "listings showed a document with part of its chunks";
}

// Searches that overlap without a gap once shared one read connection,
// whose read transaction lasted while any of their statements ran: it
// never moved past the snapshot it began with, and a document deleted
// meanwhile was still found. A search that starts after a delete (or a
// put) sees it, however many others are running.
TEST_F(StoreTest, SearchesStartingAfterAChangeSeeItWhileOthersRun) {
  auto s = open();
  ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
  std::string common;
  for (int i = 0; i < 400; ++i) common += "Sentence " + std::to_string(i) + " on boundary layer transition. ";
  ASSERT_TRUE(s->put_document("c", doc("common.txt", common, 8), alice).is_ok());
  std::atomic<bool> done{false};
  std::atomic<int> searches{0};
  std::vector<std::thread> searchers;
  for (int t = 0; t < 4; ++t)
    searchers.emplace_back([&] {
      while (!done.load()) {
        Result<std::vector<SearchHit>> r = s->search(query("boundary layer transition", SearchMode::kBm25, 20), alice);
        EXPECT_TRUE(r.is_ok()) << r.status().to_string();
        ++searches;
      }
    });
  while (searches.load() < 20) std::this_thread::yield();
  for (int round = 0; round < 5; ++round) {
    const std::string source = "secret" + std::to_string(round) + ".txt";
    ASSERT_TRUE(s->put_document("c", doc(source, "The zanzibar ledger holds the keys."), alice).is_ok());
    Result<std::vector<SearchHit>> found = s->search(query("zanzibar ledger", SearchMode::kBm25), alice);
    ASSERT_TRUE(found.is_ok()) << found.status().to_string();
    EXPECT_EQ(sources(*found), std::set<std::string>{source}) << "round " << round << ": a put not seen";
    ASSERT_TRUE(s->delete_document("c", source, alice).is_ok());
    for (SearchMode mode : {SearchMode::kBm25, SearchMode::kHybrid}) {
      Result<std::vector<SearchHit>> gone = s->search(query("zanzibar ledger", mode), alice);
      ASSERT_TRUE(gone.is_ok()) << gone.status().to_string();
      EXPECT_EQ(sources(*gone).count(source), 0u) << "round " << round << ": a deleted document found";
    }
  }
  done = true;
  for (std::thread& t : searchers) t.join();
  EXPECT_GT(searches.load(), 20);
}

// A child process writes documents in a loop and is SIGKILLed at some point;
// every document that exists afterwards is whole, in every index.
TEST_F(StoreTest, KillNineDuringWritesLeavesAConsistentStore) {
  {
    auto s = open();
    ASSERT_TRUE(s->create_collection("c", alice, {}, "").is_ok());
  }
  for (int round = 0; round < 3; ++round) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto s = Store::open(dir / "rag.db", kEmbedder.model_id(), kEmbedder.dim());
      if (!s.is_ok()) _exit(3);
      for (int i = 0;; ++i) {
        std::string text;
        for (int k = 0; k < 20; ++k) text += "Round " + std::to_string(round) + " doc " + std::to_string(i) + " sentence " + std::to_string(k) + ".\n";
        // Replace a rolling set of sources, so deletes and inserts both happen.
        (void)(*s)->put_document("c", doc("doc" + std::to_string(i % 25), text, 12), alice);
      }
    }
    usleep(150000 + 100000 * round);
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the writer stopped by itself (status " << status << ")";
    auto s = open();
    ASSERT_NE(s, nullptr);
    expect_consistent(*s);
    // Every document holds all of its chunks (20 six-word sentences, two to a 12-word chunk).
    Result<std::vector<DocumentInfo>> docs = s->list_documents("c", alice);
    ASSERT_TRUE(docs.is_ok());
    for (const DocumentInfo& d : *docs) EXPECT_EQ(d.n_chunks, 10) << d.source;
  }
}

}  // namespace
}  // namespace airlock::rag
