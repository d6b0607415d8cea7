// BERT-family encoders (bert, nomic-bert): loading with every shape checked,
// and the batched encoder pass, written against the backend operations only.
#include "airlock/engine/bert_embedding.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "airlock/engine/kv_cache.h"
#include "pass_packing.h"

namespace airlock::engine {

struct BertEmbedding::Layer {
  WeightTensor wq, wk, wv, wo;      // nomic-bert: views of attn_qkv.weight
  WeightTensor bq, bk, bv, bo;      // absent (data == nullptr) in nomic-bert
  WeightTensor attn_out_norm, attn_out_norm_b;
  WeightTensor ffn_up, ffn_up_b, ffn_gate, ffn_down, ffn_down_b;  // ffn_gate: nomic-bert only
  WeightTensor layer_out_norm, layer_out_norm_b;
};

namespace {

std::string shape_string(std::int64_t ne0, std::int64_t ne1) {
  // Appended piece by piece: GCC 12 at -O3 warns (-Wrestrict) on "[" + string&&.
  std::string s = "[";
  s += std::to_string(ne0);
  if (ne1 != 1) {
    s += ", ";
    s += std::to_string(ne1);
  }
  s += "]";
  return s;
}

// A view of `rows` rows of `w` starting at row `first` (rows are contiguous).
WeightTensor row_view(const WeightTensor& w, std::int64_t first, std::int64_t rows, const std::string& what) {
  WeightTensor v = w;
  v.name = w.name + " (" + what + ")";
  v.data = w.data + row_bytes(w.type, w.ne[0]) * static_cast<std::size_t>(first);
  v.ne[1] = rows;
  v.ne[2] = v.ne[3] = 1;
  return v;
}

}  // namespace

BertEmbedding::BertEmbedding() = default;
BertEmbedding::~BertEmbedding() = default;

Result<std::unique_ptr<BertEmbedding>> BertEmbedding::load(const std::string& gguf_path,
                                                           std::shared_ptr<Backend> backend, EncoderUse use) {
  Result<std::unique_ptr<GgufFile>> file = GgufFile::open(gguf_path);
  if (!file.is_ok()) return file.status().with_context(gguf_path);
  Result<std::unique_ptr<BertEmbedding>> e = from_gguf(std::move(*file), std::move(backend), use);
  if (!e.is_ok()) return e.status().with_context(gguf_path);
  return e;
}

Result<std::unique_ptr<BertEmbedding>> BertEmbedding::from_gguf(std::unique_ptr<GgufFile> file,
                                                                std::shared_ptr<Backend> backend, EncoderUse use) {
  if (!backend) return invalid_argument("bert: no backend");
  std::unique_ptr<BertEmbedding> e(new BertEmbedding());
  e->file_ = std::move(file);
  e->backend_ = std::move(backend);
  const GgufFile& f = *e->file_;
  BertParams& p = e->params_;
  auto arch = f.get_string("general.architecture");
  if (!arch) return verification_failed("gguf: general.architecture is missing");
  p.arch = std::string(*arch);
  if (p.arch != "bert" && p.arch != "nomic-bert")
    return invalid_argument("architecture '" + p.arch + "' is not a supported encoder (bert, nomic-bert)");
  const std::string a = p.arch + ".";
  auto need_uint = [&](const std::string& key, int* out, std::uint64_t max) -> Status {
    auto v = f.get_uint(a + key);
    if (!v || *v == 0 || *v > max) return verification_failed("gguf: " + a + key + " is missing or out of range (1.." +
                                                              std::to_string(max) + ")");
    *out = static_cast<int>(*v);
    return Status::ok();
  };
  AIRLOCK_RETURN_IF_ERROR(need_uint("embedding_length", &p.n_embd, 1 << 16));
  AIRLOCK_RETURN_IF_ERROR(need_uint("block_count", &p.n_layer, 1024));
  AIRLOCK_RETURN_IF_ERROR(need_uint("attention.head_count", &p.n_head, 1024));
  AIRLOCK_RETURN_IF_ERROR(need_uint("feed_forward_length", &p.n_ff, 1 << 20));
  p.n_head_kv = p.n_head;
  if (f.find(a + "attention.head_count_kv")) AIRLOCK_RETURN_IF_ERROR(need_uint("attention.head_count_kv", &p.n_head_kv, 1024));
  if (p.n_head % p.n_head_kv != 0)
    return verification_failed("gguf: head_count " + std::to_string(p.n_head) + " is not a multiple of head_count_kv " +
                               std::to_string(p.n_head_kv));
  if (p.n_embd % p.n_head != 0)
    return verification_failed("gguf: embedding_length " + std::to_string(p.n_embd) + " is not a multiple of head_count " +
                               std::to_string(p.n_head));
  p.head_dim = p.n_embd / p.n_head;
  if (p.arch == "bert" || f.find(a + "context_length")) {
    AIRLOCK_RETURN_IF_ERROR(need_uint("context_length", &p.n_ctx_train, 1 << 20));
  } else {
    p.n_ctx_train = 2048;  // nomic-bert without a context length: its training length
  }
  const double eps = f.get_float(a + "attention.layer_norm_epsilon").value_or(1e-12);
  if (!(eps > 0 && eps < 1)) return verification_failed("gguf: " + a + "attention.layer_norm_epsilon is out of range");
  p.norm_eps = static_cast<float>(eps);
  if (f.get_bool(a + "attention.causal").value_or(false))
    return invalid_argument(a + "attention.causal is true: causal encoders are not supported");
  if (f.find(a + "pooling_type")) {
    auto v = f.get_uint(a + "pooling_type");
    if (!v) return verification_failed("gguf: " + a + "pooling_type is not an unsigned integer");
    switch (*v) {
      case 1: p.pooling = PoolingType::kMean; break;
      case 2: p.pooling = PoolingType::kCls; break;
      case 3: p.pooling = PoolingType::kLast; break;
      case 4:
        if (use != EncoderUse::kRerank) return invalid_argument("pooling type 4 (rank) is a reranker, not an embedding model");
        break;
      case 0:
        if (use != EncoderUse::kRerank) return invalid_argument("pooling type 0 (none) gives per-token vectors, not an embedding");
        break;
      default: return invalid_argument("pooling type " + std::to_string(*v) + " is not known");
    }
  }
  if (use == EncoderUse::kRerank) {
    // What the bundle calls a reranker is read as one whatever its pooling
    // key says: llama.cpp's converter writes none (or a sentence-transformers
    // pooling) for a sequence classifier, and llama.cpp is told to rank at
    // run time. The classification head is what makes it one (below).
    if (p.arch != "bert") return invalid_argument("architecture '" + p.arch + "' is not a supported reranker (bert)");
    p.pooling = PoolingType::kRank;
  }
  if (p.arch == "nomic-bert") {
    p.rope.n_rot = p.head_dim;
    if (f.find(a + "rope.dimension_count")) AIRLOCK_RETURN_IF_ERROR(need_uint("rope.dimension_count", &p.rope.n_rot, 1 << 12));
    if (p.rope.n_rot > p.head_dim || p.rope.n_rot % 2 != 0)
      return verification_failed("gguf: " + a + "rope.dimension_count is invalid");
    const double base = f.get_float(a + "rope.freq_base").value_or(10000.0);
    if (!(base > 1 && base < 1e12)) return verification_failed("gguf: " + a + "rope.freq_base is out of range");
    p.rope.freq_base = static_cast<float>(base);
    p.rope.neox = true;  // llama.cpp rotates nomic-bert in halves
  }

  auto tok_model = f.get_string("tokenizer.ggml.model");
  if (!tok_model) return verification_failed("gguf: tokenizer.ggml.model is missing");
  if (*tok_model != "bert" && *tok_model != "t5")
    return invalid_argument("tokenizer '" + std::string(*tok_model) +
                            "' is neither WordPiece nor SentencePiece Unigram (tokenizer.ggml.model \"bert\" or \"t5\")");
  AIRLOCK_ASSIGN_OR_RETURN(e->tokenizer_, Tokenizer::from_gguf(f));
  // XLM-RoBERTa (a SentencePiece vocabulary) separates a pair's parts with
  // </s></s>, BERT with one [SEP].
  e->pair_separators_ = *tok_model == "t5" ? 2 : 1;
  // An XLM-RoBERTa input is <s> text </s>: without the <s>, CLS pooling
  // would read the first word (llama.cpp's default for a "t5" vocabulary
  // is no BOS; its converter writes the key).
  if (*tok_model == "t5" && (!e->tokenizer_->add_bos() || !e->tokenizer_->add_eos()))
    return verification_failed("gguf: an XLM-RoBERTa vocabulary (\"t5\") must add <s> and </s> "
                               "(tokenizer.ggml.add_bos_token and add_eos_token true)");
  int n_special = (e->tokenizer_->add_bos() ? 1 : 0) + (e->tokenizer_->add_eos() ? 1 : 0);
  if (use == EncoderUse::kRerank) {
    // [CLS] query [SEP] document [SEP]: both ids must be known.
    if (e->tokenizer_->bos() < 0 || e->tokenizer_->eos() < 0)
      return verification_failed("gguf: a reranker needs the [CLS] and [SEP] token ids");
    n_special = 2 + e->pair_separators_;
  }
  if (p.n_ctx_train <= n_special)
    return verification_failed("gguf: context_length " + std::to_string(p.n_ctx_train) + " leaves no room for text");
  AIRLOCK_RETURN_IF_ERROR(e->load_weights(use));
  if (e->tokenizer_->n_vocab() > p.n_vocab)
    return verification_failed("gguf: the tokenizer has " + std::to_string(e->tokenizer_->n_vocab()) +
                               " tokens, token_embd.weight " + std::to_string(p.n_vocab) + " rows");
  return e;
}

Status BertEmbedding::load_weights(EncoderUse use) {
  const GgufFile& f = *file_;
  BertParams& p = params_;
  enum class Kind { kMatrix, kVector };
  // Every tensor the pass reads: any other in the file is refused at the
  // end, not ignored.
  std::set<std::string, std::less<>> used;
  // Checks presence, shape and type, then hands the tensor to the backend.
  auto get = [&](const std::string& name, std::int64_t ne0, std::int64_t ne1, WeightTensor* out, Kind kind,
                 bool required = true) -> Status {
    const GgufTensor* t = f.tensor(name);
    if (t == nullptr) return required ? verification_failed("gguf: tensor '" + name + "' is missing") : Status::ok();
    used.insert(name);
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
      return verification_failed("gguf: tensor '" + name + "' has shape " + shape_string(t->ne[0], t->ne[1]) +
                                 (t->ne[2] != 1 || t->ne[3] != 1 ? " (and more dimensions)" : "") + ", expected " +
                                 shape_string(ne0, ne1));
    if (kind == Kind::kVector && t->type != GgmlType::kF32 && t->type != GgmlType::kF16)
      return verification_failed("gguf: tensor '" + name + "' is " + std::string(traits(t->type).name) +
                                 "; norms and biases must be F32 or F16");
    AIRLOCK_ASSIGN_OR_RETURN(*out, backend_->upload(*t));
    return Status::ok();
  };
  const std::int64_t d = p.n_embd, kv = p.kv_dim(), ff = p.n_ff;
  const GgufTensor* embd = f.tensor("token_embd.weight");
  if (embd == nullptr) return verification_failed("gguf: tensor 'token_embd.weight' is missing");
  if (embd->ne[1] < 1 || embd->ne[1] > (1 << 24))
    return verification_failed("gguf: token_embd.weight has an implausible number of rows");
  p.n_vocab = static_cast<int>(embd->ne[1]);
  AIRLOCK_RETURN_IF_ERROR(get("token_embd.weight", d, p.n_vocab, &tok_embd_, Kind::kMatrix));

  // Token types: one text is type 0 ("sentence A"), row 0, as llama.cpp
  // does throughout.
  if (const GgufTensor* types = f.tensor("token_types.weight")) {
    std::int64_t n_types = types->ne[1];
    if (auto meta = f.get_uint("tokenizer.ggml.token_type_count")) {
      if (*meta == 0 || *meta > 1024) return verification_failed("gguf: tokenizer.ggml.token_type_count is out of range");
      n_types = static_cast<std::int64_t>(*meta);
    }
    if (n_types < 1) return verification_failed("gguf: token_types.weight has no rows");
    WeightTensor all;
    AIRLOCK_RETURN_IF_ERROR(get("token_types.weight", d, n_types, &all, Kind::kMatrix));
    p.n_token_types = static_cast<int>(n_types);
    type_row0_ = row_view(all, 0, 1, "type 0");
    // A pair's second part: type 1, where the model has one.
    if (n_types >= 2) type_row1_ = row_view(all, 1, 1, "type 1");
  }
  if (p.arch == "bert")
    AIRLOCK_RETURN_IF_ERROR(get("position_embd.weight", d, p.n_ctx_train, &pos_embd_, Kind::kMatrix));
  AIRLOCK_RETURN_IF_ERROR(get("token_embd_norm.weight", d, 1, &embd_norm_, Kind::kVector));
  AIRLOCK_RETURN_IF_ERROR(get("token_embd_norm.bias", d, 1, &embd_norm_b_, Kind::kVector));

  const bool bert = p.arch == "bert";
  layers_.resize(static_cast<std::size_t>(p.n_layer));
  for (int i = 0; i < p.n_layer; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    Layer& l = layers_[static_cast<std::size_t>(i)];
    if (bert) {
      AIRLOCK_RETURN_IF_ERROR(get(b + "attn_q.weight", d, d, &l.wq, Kind::kMatrix));
      AIRLOCK_RETURN_IF_ERROR(get(b + "attn_q.bias", d, 1, &l.bq, Kind::kVector));
      AIRLOCK_RETURN_IF_ERROR(get(b + "attn_k.weight", d, kv, &l.wk, Kind::kMatrix));
      AIRLOCK_RETURN_IF_ERROR(get(b + "attn_k.bias", kv, 1, &l.bk, Kind::kVector));
      AIRLOCK_RETURN_IF_ERROR(get(b + "attn_v.weight", d, kv, &l.wv, Kind::kMatrix));
      AIRLOCK_RETURN_IF_ERROR(get(b + "attn_v.bias", kv, 1, &l.bv, Kind::kVector));
    } else {
      // One fused matrix whose rows are Q, then K, then V: three row views,
      // so each projection is a plain matmul into its own buffer.
      WeightTensor qkv;
      AIRLOCK_RETURN_IF_ERROR(get(b + "attn_qkv.weight", d, d + 2 * kv, &qkv, Kind::kMatrix));
      l.wq = row_view(qkv, 0, d, "q");
      l.wk = row_view(qkv, d, kv, "k");
      l.wv = row_view(qkv, d + kv, kv, "v");
      WeightTensor bqkv;
      AIRLOCK_RETURN_IF_ERROR(get(b + "attn_qkv.bias", d + 2 * kv, 1, &bqkv, Kind::kVector, false));
      if (present(bqkv)) {
        // A vector's "rows" are single elements: views by element offset.
        auto part = [&](std::int64_t first, std::int64_t n) {
          WeightTensor v = bqkv;
          v.data = bqkv.data + row_bytes(bqkv.type, first);
          v.ne[0] = n;
          return v;
        };
        l.bq = part(0, d);
        l.bk = part(d, kv);
        l.bv = part(d + kv, kv);
      }
    }
    AIRLOCK_RETURN_IF_ERROR(get(b + "attn_output.weight", d, d, &l.wo, Kind::kMatrix));
    AIRLOCK_RETURN_IF_ERROR(get(b + "attn_output.bias", d, 1, &l.bo, Kind::kVector, bert));
    AIRLOCK_RETURN_IF_ERROR(get(b + "attn_output_norm.weight", d, 1, &l.attn_out_norm, Kind::kVector));
    AIRLOCK_RETURN_IF_ERROR(get(b + "attn_output_norm.bias", d, 1, &l.attn_out_norm_b, Kind::kVector));
    AIRLOCK_RETURN_IF_ERROR(get(b + "ffn_up.weight", d, ff, &l.ffn_up, Kind::kMatrix));
    AIRLOCK_RETURN_IF_ERROR(get(b + "ffn_up.bias", ff, 1, &l.ffn_up_b, Kind::kVector, bert));
    if (!bert) AIRLOCK_RETURN_IF_ERROR(get(b + "ffn_gate.weight", d, ff, &l.ffn_gate, Kind::kMatrix));
    AIRLOCK_RETURN_IF_ERROR(get(b + "ffn_down.weight", ff, d, &l.ffn_down, Kind::kMatrix));
    AIRLOCK_RETURN_IF_ERROR(get(b + "ffn_down.bias", d, 1, &l.ffn_down_b, Kind::kVector, bert));
    AIRLOCK_RETURN_IF_ERROR(get(b + "layer_output_norm.weight", d, 1, &l.layer_out_norm, Kind::kVector));
    AIRLOCK_RETURN_IF_ERROR(get(b + "layer_output_norm.bias", d, 1, &l.layer_out_norm_b, Kind::kVector));
  }
  if (use == EncoderUse::kRerank) {
    // The classification head on the [CLS] state. One output: a relevance
    // logit (a head of several labels is a classifier, not a reranker).
    AIRLOCK_RETURN_IF_ERROR(get("cls.weight", d, d, &cls_, Kind::kMatrix, false));
    p.cls_dense = present(cls_);
    if (p.cls_dense) AIRLOCK_RETURN_IF_ERROR(get("cls.bias", d, 1, &cls_b_, Kind::kVector, false));
    const GgufTensor* out = f.tensor("cls.output.weight");
    if (out == nullptr)
      return invalid_argument("not a reranker: the file has no classification head (tensor 'cls.output.weight'); "
                              "an embedding model?");
    if (out->ne[0] == d && out->ne[1] > 1 && out->ne[2] == 1 && out->ne[3] == 1)
      return invalid_argument("cls.output.weight has " + std::to_string(out->ne[1]) +
                              " outputs: a classifier, not a reranker (one relevance score)");
    AIRLOCK_RETURN_IF_ERROR(get("cls.output.weight", d, 1, &cls_out_, Kind::kMatrix));
    AIRLOCK_RETURN_IF_ERROR(get("cls.output.bias", 1, 1, &cls_out_b_, Kind::kVector, false));
  }
  // (A classification head serves only reranking; llama.cpp loads it
  // optionally for every use.)
  for (const GgufTensor& t : f.tensors())
    if (!used.contains(t.name) && !(use != EncoderUse::kRerank && t.name.starts_with("cls.")))
      return invalid_argument("gguf: tensor '" + t.name + "' has no place in this engine's " + p.arch +
                              " pass; the file is refused rather than run without it");
  return Status::ok();
}

std::size_t BertEmbedding::max_tokens() const {
  const int n_special = (tokenizer_->add_bos() ? 1 : 0) + (tokenizer_->add_eos() ? 1 : 0);
  return static_cast<std::size_t>(params_.n_ctx_train - n_special);
}

std::vector<std::int32_t> BertEmbedding::input_ids(std::string_view text) const {
  // Special tokens written in the text stay text: "[SEP]" in a document
  // must not end its sequence early.
  std::vector<std::int32_t> ids = tokenizer_->encode(text, /*add_special=*/true, /*parse_special=*/false);
  const std::size_t n_ctx = static_cast<std::size_t>(params_.n_ctx_train);
  if (ids.size() > n_ctx) {
    // Cut the content, keep [SEP] last (as Hugging Face truncation does).
    const bool sep = tokenizer_->add_eos();
    const std::int32_t last = ids.back();
    ids.resize(n_ctx);
    if (sep) ids.back() = last;
  }
  return ids;
}

std::vector<float> BertEmbedding::embed(std::string_view text) const {
  const std::string s(text);
  Result<std::vector<std::vector<float>>> r = encode(std::span<const std::string>(&s, 1));
  if (!r.is_ok()) return {};
  return std::move((*r)[0]);
}

std::vector<std::vector<float>> BertEmbedding::embed_batch(std::span<const std::string> texts) const {
  Result<std::vector<std::vector<float>>> r = encode(texts);
  if (!r.is_ok()) return std::vector<std::vector<float>>(texts.size());
  return std::move(*r);
}

Result<std::vector<std::vector<float>>> BertEmbedding::encode(std::span<const std::string> texts) const {
  std::vector<std::vector<std::int32_t>> seqs;
  seqs.reserve(texts.size());
  for (const std::string& t : texts) seqs.push_back(input_ids(t));
  return embed_tokens(seqs);
}

Status BertEmbedding::check_tokens(std::span<const std::vector<std::int32_t>> seqs) const {
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    if (seqs[s].empty() || seqs[s].size() > static_cast<std::size_t>(params_.n_ctx_train))
      return invalid_argument("sequence " + std::to_string(s) + " has " + std::to_string(seqs[s].size()) +
                              " tokens (1.." + std::to_string(params_.n_ctx_train) + ")");
    for (std::int32_t id : seqs[s])
      if (id < 0 || id >= params_.n_vocab)
        return invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary");
  }
  return Status::ok();
}

Result<std::vector<std::vector<float>>> BertEmbedding::embed_tokens(
    std::span<const std::vector<std::int32_t>> seqs) const {
  if (is_reranker()) return invalid_argument("this model is a reranker: it scores pairs and embeds nothing");
  AIRLOCK_RETURN_IF_ERROR(check_tokens(seqs));
  std::vector<std::size_t> second(seqs.size());
  for (std::size_t s = 0; s < seqs.size(); ++s) second[s] = seqs[s].size();
  std::vector<std::vector<float>> out;
  AIRLOCK_RETURN_IF_ERROR(run_passes(seqs, second, &out));
  return out;
}

std::vector<std::int32_t> BertEmbedding::query_ids(std::string_view query) const {
  // Special tokens written in the text stay text.
  return tokenizer_->encode(query, /*add_special=*/false, /*parse_special=*/false);
}

BertEmbedding::Pair BertEmbedding::pair(std::string_view query, std::string_view document) const {
  return pair(query_ids(query), document);
}

BertEmbedding::Pair BertEmbedding::pair(std::span<const std::int32_t> query, std::string_view document) const {
  std::vector<std::int32_t> q(query.begin(), query.end());
  std::vector<std::int32_t> d = tokenizer_->encode(document, /*add_special=*/false, /*parse_special=*/false);
  Pair p;
  // Longest first, as Hugging Face's fast tokenizers cut a pair (what
  // sentence-transformers' CrossEncoder uses): the shorter part stays whole
  // when the longer can take the rest; otherwise each gets half the room,
  // the longer part (the document on a tie) the odd token.
  const std::size_t room = static_cast<std::size_t>(params_.n_ctx_train) - 2 - static_cast<std::size_t>(pair_separators_);
  if (q.size() + d.size() > room) {
    p.cut = true;
    const bool q_longer = q.size() > d.size();
    const std::size_t shorter = std::min(q.size(), d.size());
    std::size_t keep_short = shorter, keep_long = room - shorter;
    if (shorter > room / 2) {
      keep_short = room / 2;
      keep_long = room / 2 + room % 2;
    }
    q.resize(q_longer ? keep_long : keep_short);
    d.resize(q_longer ? keep_short : keep_long);
  }
  p.ids.reserve(q.size() + d.size() + 4);
  p.ids.push_back(tokenizer_->bos());
  p.ids.insert(p.ids.end(), q.begin(), q.end());
  for (int i = 0; i < pair_separators_; ++i) p.ids.push_back(tokenizer_->eos());
  p.second = p.ids.size();
  p.ids.insert(p.ids.end(), d.begin(), d.end());
  p.ids.push_back(tokenizer_->eos());
  return p;
}

Result<std::vector<float>> BertEmbedding::score(std::span<const Pair> pairs) const {
  if (!is_reranker()) return invalid_argument("this model is an embedding model, not a reranker");
  std::vector<std::vector<std::int32_t>> seqs;
  std::vector<std::size_t> second;
  seqs.reserve(pairs.size());
  for (const Pair& p : pairs) {
    if (p.second > p.ids.size()) return invalid_argument("a pair's second part begins past its end");
    seqs.push_back(p.ids);
    // RoBERTa's tokenizers give a pair's second part type 0, like the first.
    second.push_back(pair_separators_ == 2 ? p.ids.size() : p.second);
  }
  AIRLOCK_RETURN_IF_ERROR(check_tokens(seqs));
  std::vector<std::vector<float>> out;
  AIRLOCK_RETURN_IF_ERROR(run_passes(seqs, second, &out));
  std::vector<float> scores;
  scores.reserve(out.size());
  for (const std::vector<float>& o : out) scores.push_back(o[0]);
  return scores;
}

Status BertEmbedding::run_passes(std::span<const std::vector<std::int32_t>> seqs, std::span<const std::size_t> second,
                                 std::vector<std::vector<float>>* out) const {
  out->reserve(seqs.size());
  std::lock_guard<std::mutex> lock(forward_mu_);
  return for_each_pass(seqs, kMaxBatchTokens, [&](std::size_t first, std::size_t last) {
    return forward(seqs.subspan(first, last - first), second.subspan(first, last - first), out);
  });
}

Status BertEmbedding::forward(std::span<const std::vector<std::int32_t>> seqs, std::span<const std::size_t> second,
                              std::vector<std::vector<float>>* result) const {
  const BertParams& p = params_;
  Backend& be = *backend_;
  const std::int64_t d = p.n_embd, kv_dim = p.kv_dim(), ff = p.n_ff;

  // Token layout: the sequences one after another. Key/value layout: each
  // sequence starts on a fresh KV block, so its keys are the consecutive
  // blocks [block0[s], ...) and the decoder's paged attention, given every
  // token the whole of its own sequence as context, is exactly the
  // bidirectional attention of an encoder, confined to each sequence.
  std::int64_t n = 0, n_blocks = 0;
  std::vector<std::int64_t> tok0(seqs.size()), block0(seqs.size());
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    tok0[s] = n;
    block0[s] = n_blocks;
    n += static_cast<std::int64_t>(seqs[s].size());
    n_blocks += KvCache::blocks_for(static_cast<int>(seqs[s].size()));
  }
  std::vector<std::int32_t> tokens, positions, slots, n_ctx;
  std::vector<const std::int32_t*> tables;
  std::vector<std::int32_t> blocks(static_cast<std::size_t>(n_blocks));
  std::iota(blocks.begin(), blocks.end(), 0);
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    const int len = static_cast<int>(seqs[s].size());
    for (int i = 0; i < len; ++i) {
      tokens.push_back(seqs[s][static_cast<std::size_t>(i)]);
      positions.push_back(i);
      slots.push_back(static_cast<std::int32_t>(block0[s] * kBlockTokens + i));
      n_ctx.push_back(len);
      tables.push_back(blocks.data() + block0[s]);
    }
  }

  AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<float> x_buf, be.alloc(n * d));      // (n, d) hidden states
  AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<float> h_buf, be.alloc(n * d));      // (n, d) block-internal
  AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<float> q_buf, be.alloc(n * d));      // (n, n_head * head_dim)
  AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<float> k_buf, be.alloc(n * kv_dim)); // (n, n_head_kv * head_dim)
  AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<float> v_buf, be.alloc(n * kv_dim));
  AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<float> att_buf, be.alloc(n * d));    // (n, n_head * head_dim)
  AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<float> up_buf, be.alloc(n * ff));    // (n, n_ff)
  std::shared_ptr<float> gate_buf;
  if (present(layers_[0].ffn_gate)) {
    AIRLOCK_ASSIGN_OR_RETURN(gate_buf, be.alloc(n * ff));  // (n, n_ff)
  }
  // One layer's keys and values at a time: layers run one after another.
  AIRLOCK_ASSIGN_OR_RETURN(KvStorage kv, be.alloc_kv(1, n_blocks * kBlockTokens, kv_dim, KvType::kF32));
  float *x = x_buf.get(), *h = h_buf.get(), *q = q_buf.get(), *k = k_buf.get(), *v = v_buf.get(),
        *att = att_buf.get(), *up = up_buf.get(), *gate = gate_buf.get();

  // Embeddings: token + type + position (bert), then LayerNorm. Type 1
  // from second[s] on, where the model has it (a reranker's pairs).
  be.get_rows(tok_embd_, tokens.data(), n, x);
  if (present(type_row0_)) {
    for (std::size_t s = 0; s < seqs.size(); ++s) {
      const std::int64_t len = static_cast<std::int64_t>(seqs[s].size());
      const std::int64_t b = present(type_row1_) ? static_cast<std::int64_t>(second[s]) : len;
      if (b > 0) be.add_bias(x + tok0[s] * d, type_row0_, b, d);
      if (b < len) be.add_bias(x + (tok0[s] + b) * d, type_row1_, len - b, d);
    }
  }
  if (present(pos_embd_)) {
    be.get_rows(pos_embd_, positions.data(), n, h);
    be.add(x, h, n * d);
  }
  be.layer_norm(x, embd_norm_, embd_norm_b_, n, d, p.norm_eps, x);

  AttentionArgs aa;
  aa.q = q;
  aa.out = att;
  aa.n_tokens = n;
  aa.n_head = p.n_head;
  aa.n_kv_head = p.n_head_kv;
  aa.head_dim = p.head_dim;
  aa.scale = 1.0f / std::sqrt(static_cast<float>(p.head_dim));
  aa.kv = &kv;
  aa.layer = 0;
  aa.n_ctx = n_ctx.data();
  aa.block_table = tables.data();
  for (const Layer& l : layers_) {
    be.matmul(l.wq, x, n, q);
    be.matmul(l.wk, x, n, k);
    be.matmul(l.wv, x, n, v);
    if (present(l.bq)) be.add_bias(q, l.bq, n, d);
    if (present(l.bk)) be.add_bias(k, l.bk, n, kv_dim);
    if (present(l.bv)) be.add_bias(v, l.bv, n, kv_dim);
    if (p.rope.n_rot > 0) {
      be.rope(q, n, p.n_head, p.head_dim, positions.data(), p.rope);
      be.rope(k, n, p.n_head_kv, p.head_dim, positions.data(), p.rope);
    }
    be.kv_write(kv, 0, k, v, n, slots.data());
    be.attention(aa);
    // Post-LN: h = LayerNorm(x + attention), x = LayerNorm(h + ffn(h)).
    be.matmul(l.wo, att, n, h);
    if (present(l.bo)) be.add_bias(h, l.bo, n, d);
    be.add(h, x, n * d);
    be.layer_norm(h, l.attn_out_norm, l.attn_out_norm_b, n, d, p.norm_eps, h);
    be.matmul(l.ffn_up, h, n, up);
    if (present(l.ffn_up_b)) be.add_bias(up, l.ffn_up_b, n, ff);
    if (present(l.ffn_gate)) {
      be.matmul(l.ffn_gate, h, n, gate);
      be.swiglu(gate, up, n * ff, up);
    } else {
      be.gelu(up, n * ff, up);
    }
    be.matmul(l.ffn_down, up, n, x);
    if (present(l.ffn_down_b)) be.add_bias(x, l.ffn_down_b, n, d);
    be.add(x, h, n * d);
    be.layer_norm(x, l.layer_out_norm, l.layer_out_norm_b, n, d, p.norm_eps, x);
  }

  if (is_reranker()) return rank_head(x, tok0, result);
  // Pooling and L2 normalisation, per sequence.
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    const std::int64_t len = static_cast<std::int64_t>(seqs[s].size());
    std::vector<double> acc(static_cast<std::size_t>(d), 0.0);
    auto take = [&](std::int64_t row, double w) {
      const float* r = x + (tok0[s] + row) * d;
      for (std::int64_t i = 0; i < d; ++i) acc[static_cast<std::size_t>(i)] += w * r[i];
    };
    switch (p.pooling) {
      case PoolingType::kCls: take(0, 1.0); break;
      case PoolingType::kLast: take(len - 1, 1.0); break;
      default:
        for (std::int64_t t = 0; t < len; ++t) take(t, 1.0 / static_cast<double>(len));
        break;
    }
    double norm = 0;
    for (double a : acc) norm += a * a;
    norm = std::sqrt(norm);
    const double inv = norm > 0 ? 1.0 / norm : 0.0;
    std::vector<float> e(static_cast<std::size_t>(d));
    for (std::int64_t i = 0; i < d; ++i) e[static_cast<std::size_t>(i)] = static_cast<float>(acc[static_cast<std::size_t>(i)] * inv);
    result->push_back(std::move(e));
  }
  return Status::ok();
}

Status BertEmbedding::rank_head(const float* x, std::span<const std::int64_t> tok0,
                                std::vector<std::vector<float>>* result) const {
  Backend& be = *backend_;
  const std::int64_t d = params_.n_embd, ns = static_cast<std::int64_t>(tok0.size());
  AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<float> cls_buf, be.alloc(ns * d));  // (ns, d) the [CLS] states
  AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<float> h_buf, be.alloc(ns * d));    // (ns, d) after the dense layer
  AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<float> y_buf, be.alloc(ns));        // (ns, 1) the scores
  float *c = cls_buf.get(), *h = h_buf.get(), *y = y_buf.get();
  for (std::int64_t s = 0; s < ns; ++s) std::copy_n(x + tok0[static_cast<std::size_t>(s)] * d, d, c + s * d);
  const float* in = c;
  if (params_.cls_dense) {
    be.matmul(cls_, c, ns, h);
    if (present(cls_b_)) be.add_bias(h, cls_b_, ns, d);
    for (std::int64_t i = 0; i < ns * d; ++i) h[i] = std::tanh(h[i]);
    in = h;
  }
  be.matmul(cls_out_, in, ns, y);
  if (present(cls_out_b_)) be.add_bias(y, cls_out_b_, ns, 1);
  for (std::int64_t s = 0; s < ns; ++s) result->push_back({y[s]});
  return Status::ok();
}

}  // namespace airlock::engine
