// airlock-gen-model OUT.gguf [--embd N] [--layers N] [--ff N] [--heads N]
//                   [--kv-heads N] [--ctx N] [--f32 | --type T] [--bench-weights]
//                   [--chat-template FILE] [--rank-head]
// airlock-gen-model --model2vec OUT_DIR --tokenizer TOKENIZER.json|builtin [--dim N] [--seed N]
// airlock-gen-model --answer TEXT OUT.gguf [--token PIECE]... [--control PIECE]... [--chat-template FILE]
//                   [--chatml-tokens]
// airlock-gen-model --bert OUT.gguf --vocab VOCAB.gguf
// airlock-gen-model --bert-reranker OUT.gguf --vocab VOCAB.gguf
// airlock-gen-model --t5-vocab OUT.gguf
// writes a random Llama-architecture model (Q8_0 weights unless --f32) with a
// byte-level SentencePiece vocabulary (every byte is a token, so any text
// tokenizes). For demos, tests and benchmarks on machines without a real
// model: its output is random text. The defaults make a 2.5 MB model;
// --embd 2048 --layers 16 --ff 5632 --heads 32 --kv-heads 8 is ~1B parameters.
// --bench-weights draws uniform weights from a fast generator on every core
// (for multi-GB benchmark models; the output is random text either way).
// --chat-template stores FILE's text as tokenizer.chat_template (without it
// the model has none, and airlockd renders chat requests as ChatML).
// --rank-head makes it a yes/no reranker instead (Qwen3-Reranker's kind:
// qwen3, pooling_type 4, a rerank prompt, cls.output); its scores mean
// nothing.
//
// --model2vec writes a model2vec directory (model.safetensors with random
// Gaussian token vectors, the given WordPiece tokenizer.json, config.json):
// a text's embedding is then a random projection of its bag of tokens, so
// texts sharing words are close and unrelated texts are not. A stand-in for
// tests and the retrieval harness where no real embedding model exists; it
// knows nothing of meaning. `--tokenizer builtin` makes a small WordPiece
// vocabulary (common English words, letters and digits, "##" pieces) for
// machines without a real tokenizer.json.
//
// --t5-vocab writes a GGUF of tokenizer keys alone: a SentencePiece Unigram
// vocabulary ("t5", XLM-RoBERTa's kind) trained by the tests'
// sentencepiece/make_vectors.py, with its nmt_nfkc charsmap, <s>/</s> added.
// Give it to --bert or --bert-reranker as VOCAB.gguf for a random
// XLM-RoBERTa encoder.
//
// --answer writes a Llama-architecture model that, decoding greedily, says
// TEXT after any prompt and then stops: its layers are zero (the residual
// stream is the token embedding), so the output matrix is a bigram table.
// TEXT is made of bytes and of the --token pieces (user-defined tokens in
// the vocabulary) and --control pieces (control tokens, which decode as
// nothing), longest match first, each token at most once. For
// end-to-end tests of paths that need a known answer (a grounded answer
// citing "[1]", a tool call); it is a test fixture, not a language model.
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "airlock/common/json.h"

#include "gguf_writer.h"
#include "sentencepiece_vocab.h"

namespace {

using namespace airlock;

// A WordPiece tokenizer.json of special tokens, common words, and single
// characters (word-initial and "##" continuations), so any ASCII word splits.
std::string builtin_tokenizer() {
  static const char* kWords[] = {
      "the", "of", "and", "a", "to", "in", "is", "for", "on", "that", "by", "with", "as", "at", "from", "are", "be",
      "this", "it", "an", "or", "was", "which", "what", "how", "when", "where", "who", "why", "not", "can", "has",
      "have", "its", "their", "more", "than", "into", "about", "after", "before", "between", "over", "under",
      "air", "aircraft", "wing", "flow", "speed", "pressure", "heat", "engine", "fuel", "power", "system", "data",
      "model", "test", "results", "number", "high", "low", "time", "water", "energy", "force", "load", "design",
      "bank", "account", "payment", "policy", "patient", "report", "security", "network", "service", "document",
      "question", "answer", "robot", "story", "little", "day", "make", "use", "new", "one", "two", "first"};
  nlohmann::json vocab = nlohmann::json::object();
  int id = 0;
  auto add = [&](const std::string& t) {  // ids must be 0..n-1 with no gaps
    if (!vocab.contains(t)) vocab[t] = id++;
  };
  for (const char* t : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}) add(t);
  for (const char* w : kWords) add(w);
  for (char c = 'a'; c <= 'z'; ++c) {
    add(std::string(1, c));
    add("##" + std::string(1, c));
  }
  for (char c = '0'; c <= '9'; ++c) {
    add(std::string(1, c));
    add("##" + std::string(1, c));
  }
  for (const char* p : {".", ",", "?", "!", ":", ";", "-", "(", ")", "'", "\""}) add(p);
  nlohmann::json t = {
      {"version", "1.0"},
      {"normalizer", {{"type", "BertNormalizer"}, {"lowercase", true}, {"strip_accents", nullptr},
                      {"clean_text", true}, {"handle_chinese_chars", true}}},
      {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
      {"model", {{"type", "WordPiece"}, {"unk_token", "[UNK]"}, {"continuing_subword_prefix", "##"},
                 {"max_input_chars_per_word", 100}, {"vocab", vocab}}}};
  return t.dump(1);
}

// The byte-level SentencePiece vocabulary of the random models: <unk>, <s>,
// </s>, then one token per byte (and with `chatml`, the control tokens
// <|im_start|> and <|im_end|>), then `controls` as control tokens, then
// `pieces` as user-defined tokens (text that decodes as itself).
void byte_vocabulary(testing::GgufWriter& w, bool chatml = false, const std::vector<std::string>& pieces = {},
                     const std::vector<std::string>& controls = {}) {
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<std::int32_t> types = {2, 3, 3};  // unknown, control, control
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    tokens.push_back(name);
    types.push_back(6);  // byte
  }
  if (chatml) {
    tokens.insert(tokens.end(), {"<|im_start|>", "<|im_end|>"});
    types.insert(types.end(), {3, 3});
  }
  for (const std::string& c : controls) {
    tokens.push_back(c);
    types.push_back(3);  // control
  }
  for (const std::string& p : pieces) {
    tokens.push_back(p);
    types.push_back(4);  // user-defined
  }
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_f32_array("tokenizer.ggml.scores", std::vector<float>(tokens.size(), 0.0f));
  w.set_i32_array("tokenizer.ggml.token_type", types);
  w.set_u32("tokenizer.ggml.unknown_token_id", 0);
  w.set_u32("tokenizer.ggml.bos_token_id", 1);
  w.set_u32("tokenizer.ggml.eos_token_id", 2);
}

struct AnswerOptions {
  std::string text;
  std::vector<std::string> pieces;           // --token: multi-byte tokens the answer may use
  std::vector<std::string> controls;         // --control: control tokens the answer may use
  std::optional<std::string> chat_template;  // --chat-template
  bool chatml = false;                       // --chatml-tokens
};

int write_answer_model(const AnswerOptions& o, const std::string& out_path) {
  // The answer as tokens: at each point the longest --token piece that
  // matches, else one byte. Every token may appear once (the model's next
  // token depends on the previous one alone).
  const int first_control = 3 + 256 + (o.chatml ? 2 : 0);
  const int first_piece = first_control + static_cast<int>(o.controls.size());
  auto byte_token = [](char c) { return 3 + static_cast<int>(static_cast<unsigned char>(c)); };
  std::vector<int> answer;
  for (std::size_t at = 0; at < o.text.size();) {
    int best = -1;
    std::size_t best_len = 0;
    for (const auto& [list, first] : {std::pair{&o.controls, first_control}, std::pair{&o.pieces, first_piece}})
      for (std::size_t k = 0; k < list->size(); ++k)
        if ((*list)[k].size() > best_len && o.text.compare(at, (*list)[k].size(), (*list)[k]) == 0) {
          best = first + static_cast<int>(k);
          best_len = (*list)[k].size();
        }
    answer.push_back(best >= 0 ? best : byte_token(o.text[at]));
    at += best >= 0 ? best_len : 1;
  }
  if (answer.empty() || answer.size() > 60)
    return std::fprintf(stderr, "airlock-gen-model: --answer needs 1-60 tokens\n"), 2;
  for (std::size_t i = 0; i < answer.size(); ++i)
    if (std::find(answer.begin(), answer.end(), answer[i]) != answer.begin() + static_cast<std::ptrdiff_t>(i))
      return std::fprintf(stderr, "airlock-gen-model: --answer tokens must be distinct (bytes, or --token pieces)\n"), 2;
  // Classes of the previous token: 0 any other token, k + 1 the k-th token
  // of the answer; class c's embedding is the unit vector e_c, and the
  // output row of the token that should follow class c has a large weight
  // at c.
  const int n_vocab = first_piece + static_cast<int>(o.pieces.size()), n_embd = 64, n_ff = 32, n_layer = 1;
  std::vector<float> embd(static_cast<std::size_t>(n_vocab) * n_embd, 0.0f), out(embd.size(), 0.0f);
  for (int t = 0; t < n_vocab; ++t) embd[static_cast<std::size_t>(t) * n_embd] = 1.0f;  // class 0
  for (std::size_t k = 0; k < answer.size(); ++k) {
    std::fill_n(embd.begin() + static_cast<std::ptrdiff_t>(answer[k] * n_embd), n_embd, 0.0f);
    embd[static_cast<std::size_t>(answer[k]) * n_embd + k + 1] = 1.0f;
  }
  // class 0 -> answer[0]; class k+1 -> answer[k+1], the last -> </s>.
  out[static_cast<std::size_t>(answer[0]) * n_embd + 0] = 20.0f;
  for (std::size_t k = 0; k < answer.size(); ++k) {
    const int next = k + 1 < answer.size() ? answer[k + 1] : 2;
    out[static_cast<std::size_t>(next) * n_embd + k + 1] = 20.0f;
  }
  testing::GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", "airlock test model that answers a fixed text");
  w.set_u32("llama.context_length", 4096);
  w.set_u32("llama.embedding_length", n_embd);
  w.set_u32("llama.feed_forward_length", n_ff);
  w.set_u32("llama.block_count", n_layer);
  w.set_u32("llama.attention.head_count", 2);
  w.set_u32("llama.attention.head_count_kv", 2);
  w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.set_f32("llama.rope.freq_base", 10000.0f);
  byte_vocabulary(w, o.chatml, o.pieces, o.controls);
  if (o.chat_template) w.set_string("tokenizer.chat_template", *o.chat_template);
  using engine::GgmlType;
  const std::vector<float> ones(n_embd, 1.0f);
  w.add_tensor("token_embd.weight", GgmlType::kF32, {n_embd, n_vocab}, embd);
  w.add_tensor("output_norm.weight", GgmlType::kF32, {n_embd}, ones);
  w.add_tensor("output.weight", GgmlType::kF32, {n_embd, n_vocab}, out);
  const std::vector<float> sq(static_cast<std::size_t>(n_embd) * n_embd, 0.0f), ff(static_cast<std::size_t>(n_embd) * n_ff, 0.0f);
  w.add_tensor("blk.0.attn_norm.weight", GgmlType::kF32, {n_embd}, ones);
  for (const char* t : {"attn_q", "attn_k", "attn_v", "attn_output"})
    w.add_tensor(std::string("blk.0.") + t + ".weight", GgmlType::kF32, {n_embd, n_embd}, sq);
  w.add_tensor("blk.0.ffn_norm.weight", GgmlType::kF32, {n_embd}, ones);
  w.add_tensor("blk.0.ffn_gate.weight", GgmlType::kF32, {n_embd, n_ff}, ff);
  w.add_tensor("blk.0.ffn_up.weight", GgmlType::kF32, {n_embd, n_ff}, ff);
  w.add_tensor("blk.0.ffn_down.weight", GgmlType::kF32, {n_ff, n_embd}, ff);
  const std::string bytes = w.bytes();
  std::ofstream f(out_path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) return std::fprintf(stderr, "airlock-gen-model: cannot write %s\n", out_path.c_str()), 1;
  std::printf("wrote %s: a test model that answers \"%s\" to any prompt\n", out_path.c_str(), o.text.c_str());
  return 0;
}

// A random BERT encoder (bge-small-like shape, much smaller) carrying the
// WordPiece vocabulary of VOCAB.gguf (ggml-vocab-bert-bge.gguf, say); with
// `reranker`, a cross-encoder (pooling rank, the RoBERTa-style head).
int write_bert(const std::string& out_path, const std::string& vocab_path, bool reranker) {
  auto vocab = engine::GgufFile::open(vocab_path);
  if (!vocab.is_ok()) return std::fprintf(stderr, "airlock-gen-model: %s\n", vocab.status().to_string().c_str()), 2;
  auto tokens = (*vocab)->get_string_array("tokenizer.ggml.tokens");
  if (!tokens.is_ok()) return std::fprintf(stderr, "airlock-gen-model: %s has no tokenizer.ggml.tokens\n", vocab_path.c_str()), 2;
  testing::BertModelSpec spec;
  spec.n_vocab = static_cast<int>(tokens->size());
  spec.n_embd = 64;
  spec.n_layer = 2;
  spec.n_head = 4;
  spec.n_ff = 128;
  spec.n_ctx = 128;
  if (reranker) {
    spec.pooling = 4;
    spec.rank_head = 2;
    spec.seed = 7;
  }
  const engine::GgufFile& v = **vocab;
  spec.metadata = [&v](testing::GgufWriter& w) { w.copy_metadata(v, "tokenizer.", {"tokenizer.ggml.token_type_count"}); };
  const testing::BertTestModel m = testing::make_bert_model(spec);
  std::ofstream f(out_path, std::ios::binary | std::ios::trunc);
  f.write(m.gguf.data(), static_cast<std::streamsize>(m.gguf.size()));
  if (!f) return std::fprintf(stderr, "airlock-gen-model: cannot write %s\n", out_path.c_str()), 1;
  std::printf("wrote %s: a random BERT %s (%d tokens, %d dimensions); its %s mean nothing\n", out_path.c_str(),
              reranker ? "reranker" : "encoder", spec.n_vocab, spec.n_embd, reranker ? "scores" : "vectors");
  return 0;
}

int write_model2vec(int argc, char** argv) {
  std::string out_dir, tokenizer;
  int dim = 64;
  unsigned seed = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--model2vec") out_dir = argv[i + 1];
    else if (a == "--tokenizer") tokenizer = argv[i + 1];
    else if (a == "--dim") dim = std::atoi(argv[i + 1]);
    else if (a == "--seed") seed = static_cast<unsigned>(std::atoi(argv[i + 1]));
    else return std::fprintf(stderr, "airlock-gen-model: unknown option %s\n", a.c_str()), 2;
  }
  if (out_dir.empty() || tokenizer.empty() || dim < 1 || dim > 4096)
    return std::fprintf(stderr, "usage: airlock-gen-model --model2vec OUT_DIR --tokenizer TOKENIZER.json|builtin [--dim N] [--seed N]\n"), 2;
  std::stringstream ss;
  if (tokenizer == "builtin") {
    ss << builtin_tokenizer();
  } else {
    std::ifstream in(tokenizer, std::ios::binary);
    ss << in.rdbuf();
  }
  const nlohmann::json tj = nlohmann::json::parse(ss.str(), nullptr, false);
  if (tj.is_discarded() || !tj.contains("model") || !tj["model"].contains("vocab") || !tj["model"]["vocab"].is_object())
    return std::fprintf(stderr, "airlock-gen-model: %s is not a WordPiece tokenizer.json\n", tokenizer.c_str()), 2;
  const std::size_t n_vocab = tj["model"]["vocab"].size();
  ::mkdir(out_dir.c_str(), 0755);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> rows(n_vocab * static_cast<std::size_t>(dim));
  for (float& x : rows) x = normal(rng);
  const std::size_t n_bytes = rows.size() * sizeof(float);
  std::string header = nlohmann::json{{"embeddings", {{"dtype", "F32"}, {"shape", {n_vocab, dim}},
                                                       {"data_offsets", {0, n_bytes}}}}}.dump();
  while (header.size() % 8 != 0) header += ' ';
  std::ofstream st(out_dir + "/model.safetensors", std::ios::binary | std::ios::trunc);
  const std::uint64_t len = header.size();
  for (int b = 0; b < 8; ++b) st.put(static_cast<char>((len >> (8 * b)) & 0xff));
  st << header;
  st.write(reinterpret_cast<const char*>(rows.data()), static_cast<std::streamsize>(n_bytes));
  std::ofstream(out_dir + "/tokenizer.json", std::ios::binary | std::ios::trunc) << ss.str();
  std::ofstream(out_dir + "/config.json", std::ios::trunc)
      << nlohmann::json{{"model_type", "model2vec"}, {"hidden_dim", dim}, {"normalize", true}}.dump(2) << "\n";
  if (!st) return std::fprintf(stderr, "airlock-gen-model: cannot write %s\n", out_dir.c_str()), 1;
  std::printf("wrote %s: a random model2vec model (%zu tokens x %d dimensions); it knows nothing of meaning\n",
              out_dir.c_str(), n_vocab, dim);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--model2vec") return write_model2vec(argc, argv);
  if (argc >= 4 && std::string(argv[1]) == "--answer") {
    AnswerOptions o;
    o.text = argv[2];
    for (int i = 4; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--chatml-tokens") {
        o.chatml = true;
      } else if (a == "--token" && i + 1 < argc && argv[i + 1][0] != '\0') {
        o.pieces.push_back(argv[++i]);
      } else if (a == "--control" && i + 1 < argc && argv[i + 1][0] != '\0') {
        o.controls.push_back(argv[++i]);
      } else if (a == "--chat-template" && i + 1 < argc) {
        std::ifstream f(argv[++i], std::ios::binary);
        if (!f) return std::fprintf(stderr, "airlock-gen-model: cannot read %s\n", argv[i]), 2;
        o.chat_template = std::string(std::istreambuf_iterator<char>(f), {});
      } else {
        return std::fprintf(stderr, "airlock-gen-model: unknown --answer option %s\n", a.c_str()), 2;
      }
    }
    return write_answer_model(o, argv[3]);
  }
  if (argc == 3 && std::string(argv[1]) == "--t5-vocab") {
    airlock::testing::GgufWriter w;
    w.set_string("general.architecture", "bert");
    try {  // the vocabulary is read from the source tree's tests/engine/sentencepiece
      airlock::testing::set_t5_vocab(w, airlock::testing::model_named("nfkc"), /*with_ids=*/true);
    } catch (const std::exception& e) {
      return std::fprintf(stderr, "airlock-gen-model: %s\n", e.what()), 2;
    }
    const std::string bytes = w.bytes();
    std::ofstream f(argv[2], std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!f) return std::fprintf(stderr, "airlock-gen-model: cannot write %s\n", argv[2]), 1;
    std::printf("wrote %s: a SentencePiece Unigram vocabulary (t5) of tokenizer keys alone\n", argv[2]);
    return 0;
  }
  if (argc == 5 && (std::string(argv[1]) == "--bert" || std::string(argv[1]) == "--bert-reranker") &&
      std::string(argv[3]) == "--vocab")
    return write_bert(argv[2], argv[4], std::string(argv[1]) == "--bert-reranker");
  // An output path never starts with '-': "--help" (or a mistyped option)
  // gets the usage, not a model file of that name.
  if (argc < 2 || argv[1][0] == '-') {
    const bool help = argc >= 2 && (std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help");
    std::fprintf(help ? stdout : stderr,
                 "usage: airlock-gen-model OUT.gguf [--embd N] [--layers N] [--ff N] [--heads N] [--kv-heads N] "
                 "[--ctx N] [--f32 | --type Q8_0|Q4_K|...] [--bench-weights] [--chat-template FILE] [--chatml-tokens] "
                 "[--rank-head]\n"
                 "       airlock-gen-model --answer TEXT OUT.gguf [--token PIECE] [--control PIECE] ...\n"
                 "       airlock-gen-model --t5-vocab OUT.gguf\n"
                 "       airlock-gen-model --bert|--bert-reranker OUT.gguf --vocab VOCAB.txt\n"
                 "       airlock-gen-model --model2vec OUT_DIR --tokenizer TOKENIZER.json|builtin [--dim N] [--seed N]\n");
    return help ? 0 : 2;
  }
  using namespace airlock;
  testing::TestModelSpec spec;
  spec.n_vocab = 3 + 256;
  spec.n_embd = 256;
  spec.n_layer = 4;
  spec.n_head = 8;
  spec.n_head_kv = 4;
  spec.n_ff = 512;
  spec.n_ctx = 2048;
  spec.weight_type = engine::GgmlType::kQ8_0;
  std::optional<std::string> chat_template;
  bool chatml = false, rank_head = false;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--rank-head") {
      rank_head = true;
      continue;
    }
    if (a == "--chatml-tokens") {
      chatml = true;
      spec.n_vocab = 3 + 256 + 2;
      continue;
    }
    if (a == "--f32") {
      spec.weight_type = engine::GgmlType::kF32;
      continue;
    }
    if (a == "--bench-weights") {
      spec.bench_weights = true;
      continue;
    }
    if (a == "--chat-template" && i + 1 < argc) {
      std::ifstream f(argv[++i], std::ios::binary);
      if (!f) return std::fprintf(stderr, "airlock-gen-model: cannot read %s\n", argv[i]), 2;
      chat_template = std::string(std::istreambuf_iterator<char>(f), {});
      continue;
    }
    if (a == "--type" && i + 1 < argc) {  // weight type by GGUF name: F32, F16, Q8_0, Q4_K, ...
      const std::string name = argv[++i];
      bool found = false;
      for (std::uint32_t id = 0; id < 64 && !found; ++id) {
        const engine::TypeTraits* t = engine::type_traits(id);
        if (t != nullptr && t->supported && t->name == name) {
          spec.weight_type = static_cast<engine::GgmlType>(id);
          found = true;
        }
      }
      if (!found) return std::fprintf(stderr, "airlock-gen-model: unknown or unsupported type %s\n", name.c_str()), 2;
      continue;
    }
    if (i + 1 >= argc) return std::fprintf(stderr, "airlock-gen-model: %s needs a value\n", a.c_str()), 2;
    const int v = std::atoi(argv[++i]);
    if (v <= 0) return std::fprintf(stderr, "airlock-gen-model: %s must be positive\n", a.c_str()), 2;
    if (a == "--embd") spec.n_embd = v;
    else if (a == "--layers") spec.n_layer = v;
    else if (a == "--ff") spec.n_ff = v;
    else if (a == "--heads") spec.n_head = v;
    else if (a == "--kv-heads") spec.n_head_kv = v;
    else if (a == "--ctx") spec.n_ctx = v;
    else return std::fprintf(stderr, "airlock-gen-model: unknown option %s\n", a.c_str()), 2;
  }
  if (rank_head) spec.arch = "qwen3";
  if (spec.n_embd % spec.n_head != 0 || spec.n_head % spec.n_head_kv != 0 || spec.n_embd % 32 != 0)
    return std::fprintf(stderr, "airlock-gen-model: embd must divide by heads and 32, heads by kv-heads\n"), 2;
  spec.metadata = [&chat_template, chatml, rank_head, &spec](testing::GgufWriter& w) {
    w.set_string("general.name", "airlock generated random model");
    byte_vocabulary(w, chatml);
    if (chat_template) w.set_string("tokenizer.chat_template", *chat_template);
    if (rank_head) {  // a yes/no reranker as llama.cpp converts Qwen3-Reranker
      w.set_u32("qwen3.pooling_type", 4);
      w.set_string_array("qwen3.classifier.output_labels", {"yes", "no"});
      w.set_string("tokenizer.chat_template.rerank",
                   "Judge whether the Document answers the Query (yes or no).\nQuery: {query}\nDocument: "
                   "{document}\nAnswer: ");
      std::vector<float> head(2 * static_cast<std::size_t>(spec.n_embd));
      for (std::size_t i = 0; i < head.size(); ++i) head[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(i)));
      w.add_tensor("cls.output.weight", engine::GgmlType::kF32, {spec.n_embd, 2}, head);
    }
  };
  const testing::TestModel m = testing::make_test_model(spec);
  std::ofstream out(argv[1], std::ios::binary | std::ios::trunc);
  out.write(m.gguf.data(), static_cast<std::streamsize>(m.gguf.size()));
  out.close();
  if (!out) {
    std::fprintf(stderr, "airlock-gen-model: cannot write %s\n", argv[1]);
    return 1;
  }
  std::printf("wrote %s (%zu bytes): a random model, its output is random text\n", argv[1], m.gguf.size());
  return 0;
}
