#include "gguf_writer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <random>
#include <stdexcept>
#include <thread>

namespace airlock::testing {

using engine::GgmlType;

namespace {
template <typename T>
std::string le(T v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof v);
}
std::string gstr(const std::string& s) { return le<std::uint64_t>(s.size()) + s; }
}  // namespace

void GgufWriter::set_u32(const std::string& k, std::uint32_t v) { kv_ += gstr(k) + le<std::uint32_t>(4) + le(v); ++n_kv_; }
void GgufWriter::set_f32(const std::string& k, float v) { kv_ += gstr(k) + le<std::uint32_t>(6) + le(v); ++n_kv_; }
void GgufWriter::set_bool(const std::string& k, bool v) { kv_ += gstr(k) + le<std::uint32_t>(7) + le<std::uint8_t>(v); ++n_kv_; }
void GgufWriter::set_string(const std::string& k, const std::string& v) { kv_ += gstr(k) + le<std::uint32_t>(8) + gstr(v); ++n_kv_; }
void GgufWriter::set_string_array(const std::string& k, const std::vector<std::string>& v) {
  kv_ += gstr(k) + le<std::uint32_t>(9) + le<std::uint32_t>(8) + le<std::uint64_t>(v.size());
  for (const std::string& s : v) kv_ += gstr(s);
  ++n_kv_;
}
void GgufWriter::set_f32_array(const std::string& k, const std::vector<float>& v) {
  kv_ += gstr(k) + le<std::uint32_t>(9) + le<std::uint32_t>(6) + le<std::uint64_t>(v.size());
  for (float f : v) kv_ += le(f);
  ++n_kv_;
}
void GgufWriter::set_i32_array(const std::string& k, const std::vector<std::int32_t>& v) {
  kv_ += gstr(k) + le<std::uint32_t>(9) + le<std::uint32_t>(5) + le<std::uint64_t>(v.size());
  for (std::int32_t i : v) kv_ += le(i);
  ++n_kv_;
}

void GgufWriter::set_u8_array(const std::string& k, const std::string& bytes) {
  kv_ += gstr(k) + le<std::uint32_t>(9) + le<std::uint32_t>(0) + le<std::uint64_t>(bytes.size()) + bytes;
  ++n_kv_;
}

void set_letter_vocab(GgufWriter& w, const std::vector<std::string>& controls) {
  std::vector<std::string> tokens;
  for (char c = 'a'; c <= 'z'; ++c) tokens.emplace_back(1, c);
  for (char c = 'A'; c <= 'Z'; ++c) tokens.emplace_back(1, c);
  for (char c = '0'; c <= '9'; ++c) tokens.emplace_back(1, c);
  tokens.push_back("\xC4\xA0");  // a space
  tokens.push_back("<|endoftext|>");
  std::vector<std::int32_t> types(tokens.size(), 1);
  types.back() = 3;  // control
  for (const std::string& c : controls) {
    tokens.push_back(c);
    types.push_back(3);
  }
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", "qwen2");
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_i32_array("tokenizer.ggml.token_type", types);
  w.set_string_array("tokenizer.ggml.merges", {"a b"});
  w.set_u32("tokenizer.ggml.eos_token_id", 63);
}

void GgufWriter::copy_metadata(const engine::GgufFile& from, const std::string& prefix,
                               const std::vector<std::string>& skip) {
  using VT = engine::GgufValueType;
  auto scalar = [](VT t, const engine::GgufValue& v) -> std::string {
    switch (t) {
      case VT::kU8: return le<std::uint8_t>(static_cast<std::uint8_t>(v.u));
      case VT::kI8: return le<std::int8_t>(static_cast<std::int8_t>(v.i));
      case VT::kU16: return le<std::uint16_t>(static_cast<std::uint16_t>(v.u));
      case VT::kI16: return le<std::int16_t>(static_cast<std::int16_t>(v.i));
      case VT::kU32: return le<std::uint32_t>(static_cast<std::uint32_t>(v.u));
      case VT::kI32: return le<std::int32_t>(static_cast<std::int32_t>(v.i));
      case VT::kF32: return le<float>(static_cast<float>(v.f));
      case VT::kBool: return le<std::uint8_t>(v.u ? 1 : 0);
      case VT::kU64: return le<std::uint64_t>(v.u);
      case VT::kI64: return le<std::int64_t>(v.i);
      case VT::kF64: return le<double>(v.f);
      case VT::kString: return gstr(std::string(v.str));
      default: throw std::runtime_error("copy_metadata: nested arrays are not supported");
    }
  };
  for (const auto& [key, v] : from.metadata()) {
    if (key.rfind(prefix, 0) != 0) continue;
    if (std::find(skip.begin(), skip.end(), key) != skip.end()) continue;
    kv_ += gstr(key) + le<std::uint32_t>(static_cast<std::uint32_t>(v.type));
    if (v.type != VT::kArray) {
      kv_ += scalar(v.type, v);
    } else {
      kv_ += le<std::uint32_t>(static_cast<std::uint32_t>(v.elem_type)) + le<std::uint64_t>(v.n_elems);
      if (v.elem_type == VT::kString)
        for (std::string_view e : v.strings) kv_ += gstr(std::string(e));
      else
        kv_.append(reinterpret_cast<const char*>(v.raw.data()), v.raw.size());
    }
    ++n_kv_;
  }
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<std::int64_t> ne,
                            const std::vector<float>& values) {
  std::int64_t rows = 1;
  for (std::size_t i = 1; i < ne.size(); ++i) rows *= ne[i];
  if (static_cast<std::int64_t>(values.size()) != ne[0] * rows) throw std::runtime_error("tensor size mismatch");
  const std::size_t rb = engine::row_bytes(type, ne[0]);
  std::string data(rb * static_cast<std::size_t>(rows), '\0');
  for (std::int64_t r = 0; r < rows; ++r) engine::quantize_row(type, values.data() + r * ne[0], data.data() + rb * r, ne[0]);
  tensors_.push_back({name, type, std::move(ne), std::move(data)});
}

void GgufWriter::add_tensor_bytes(const std::string& name, GgmlType type, std::vector<std::int64_t> ne,
                                  std::string data) {
  std::int64_t rows = 1;
  for (std::size_t i = 1; i < ne.size(); ++i) rows *= ne[i];
  if (data.size() != engine::row_bytes(type, ne[0]) * static_cast<std::size_t>(rows))
    throw std::runtime_error("tensor size mismatch");
  tensors_.push_back({name, type, std::move(ne), std::move(data)});
}

namespace {

// Rows of uniform numbers on [-sqrt(3), sqrt(3)) (unit variance) times
// `scale`, plus `offset`, quantised to `type`, made by every core: each
// slice of rows has its own xorshift64 stream seeded from `seed`, so the
// bytes do not depend on the thread count.
std::string bench_tensor(GgmlType type, std::int64_t ne0, std::int64_t ne1, float scale, float offset,
                         std::uint64_t seed) {
  const std::size_t rb = engine::row_bytes(type, ne0);
  std::string data(rb * static_cast<std::size_t>(ne1), '\0');
  constexpr std::int64_t kSlice = 64;  // rows per stream
  const std::int64_t n_slices = (ne1 + kSlice - 1) / kSlice;
  const int n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  auto work = [&](int t) {
    std::vector<float> row(static_cast<std::size_t>(ne0));
    for (std::int64_t sl = t; sl < n_slices; sl += n_threads) {
      std::uint64_t x = (seed + static_cast<std::uint64_t>(sl) + 1) * 0x9E3779B97F4A7C15ull;
      for (std::int64_t r = sl * kSlice; r < std::min(ne1, (sl + 1) * kSlice); ++r) {
        for (float& v : row) {
          x ^= x << 13;
          x ^= x >> 7;
          x ^= x << 17;
          v = offset + scale * (static_cast<float>(x >> 40) * (3.4641016f / 16777216.0f) - 1.7320508f);
        }
        engine::quantize_row(type, row.data(), data.data() + rb * static_cast<std::size_t>(r), ne0);
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 1; t < n_threads; ++t) threads.emplace_back(work, t);
  work(0);
  for (std::thread& th : threads) th.join();
  return data;
}

}  // namespace

std::string GgufWriter::bytes(std::uint32_t version) const {
  std::string out = "GGUF" + le(version) + le<std::uint64_t>(tensors_.size()) + le(n_kv_) + kv_;
  std::uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    out += gstr(t.name) + le<std::uint32_t>(static_cast<std::uint32_t>(t.ne.size()));
    for (std::int64_t d : t.ne) out += le<std::uint64_t>(static_cast<std::uint64_t>(d));
    out += le<std::uint32_t>(static_cast<std::uint32_t>(t.type)) + le(offset);
    offset += (t.data.size() + 31) / 32 * 32;
  }
  out.resize((out.size() + 31) / 32 * 32, '\0');
  for (const Tensor& t : tensors_) {
    out += t.data;
    out.resize((out.size() + 31) / 32 * 32, '\0');
  }
  return out;
}

TestModel make_test_model(const TestModelSpec& spec_in) {
  TestModel m;
  m.spec = spec_in;
  TestModelSpec& s = m.spec;
  if (s.head_dim == 0) s.head_dim = s.n_embd / s.n_head;
  std::mt19937 rng(s.seed);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  GgufWriter w;
  w.set_string("general.architecture", s.arch);
  w.set_u32(s.arch + ".context_length", static_cast<std::uint32_t>(s.n_ctx));
  w.set_u32(s.arch + ".embedding_length", static_cast<std::uint32_t>(s.n_embd));
  w.set_u32(s.arch + ".block_count", static_cast<std::uint32_t>(s.n_layer));
  w.set_u32(s.arch + ".feed_forward_length", static_cast<std::uint32_t>(s.n_ff));
  w.set_u32(s.arch + ".attention.head_count", static_cast<std::uint32_t>(s.n_head));
  if (s.kv_heads_per_layer.empty())
    w.set_u32(s.arch + ".attention.head_count_kv", static_cast<std::uint32_t>(s.n_head_kv));
  else
    w.set_i32_array(s.arch + ".attention.head_count_kv", s.kv_heads_per_layer);
  w.set_u32(s.arch + ".attention.key_length", static_cast<std::uint32_t>(s.head_dim));
  if (s.n_rot == 0) s.n_rot = s.head_dim;
  w.set_u32(s.arch + ".rope.dimension_count", static_cast<std::uint32_t>(s.n_rot));
  if (s.rope_orig_ctx > 0) w.set_u32(s.arch + ".rope.scaling.original_context_length", static_cast<std::uint32_t>(s.rope_orig_ctx));
  if (s.rope_attn_factor > 0) w.set_f32(s.arch + ".rope.scaling.attn_factor", s.rope_attn_factor);
  w.set_f32(s.arch + ".rope.freq_base", s.rope_base);
  w.set_f32(s.arch + ".attention.layer_norm_rms_epsilon", 1e-5f);
  if (s.sliding_window > 0) w.set_u32(s.arch + ".attention.sliding_window", static_cast<std::uint32_t>(s.sliding_window));
  if (s.attn_softcap > 0) w.set_f32(s.arch + ".attn_logit_softcapping", s.attn_softcap);
  if (s.final_softcap > 0) w.set_f32(s.arch + ".final_logit_softcapping", s.final_softcap);
  if (s.arch == "granite") w.set_f32(s.arch + ".logit_scale", s.logit_scale > 0 ? s.logit_scale : 1.0f);
  if (s.residual_scale > 0) w.set_f32(s.arch + ".residual_scale", s.residual_scale);
  if (s.embedding_scale > 0) w.set_f32(s.arch + ".embedding_scale", s.embedding_scale);
  if (s.attention_scale > 0) w.set_f32(s.arch + ".attention.scale", s.attention_scale);
  if (s.rope_finetuned >= 0) w.set_bool(s.arch + ".rope.scaling.finetuned", s.rope_finetuned == 1);
  if (s.rope_linear > 0) {
    w.set_string(s.arch + ".rope.scaling.type", "linear");
    w.set_f32(s.arch + ".rope.scaling.factor", s.rope_linear);
  }
  if (s.metadata) s.metadata(w);

  std::uint64_t bench_seed = s.seed;
  // `fused`: the values go there (to be written as part of a fused
  // tensor) instead of into the file; the engine will read them as `name`.
  auto add = [&](const std::string& name, std::int64_t ne0, std::int64_t ne1, float scale, bool norm,
                 std::vector<float>* fused = nullptr) {
    GgmlType type = norm ? GgmlType::kF32 : s.weight_type;
    std::vector<std::int64_t> ne = ne1 == 1 ? std::vector<std::int64_t>{ne0} : std::vector<std::int64_t>{ne0, ne1};
    if (s.bench_weights) {
      bench_seed += 0x100000;  // a fresh range of streams per tensor
      w.add_tensor_bytes(name, type, ne,
                         bench_tensor(type, ne0, ne1, norm ? 0.1f : scale, norm ? 1.0f : 0.0f, bench_seed));
      return;
    }
    std::vector<float> v(static_cast<std::size_t>(ne0 * ne1));
    for (float& x : v) x = norm ? 1.0f + 0.1f * gauss(rng) : scale * gauss(rng);
    if (fused != nullptr) fused->insert(fused->end(), v.begin(), v.end());
    else w.add_tensor(name, type, ne, v);
    // What the engine will read: quantise then dequantise.
    std::vector<float> back(v.size());
    const std::size_t rb = engine::row_bytes(type, ne0);
    std::string tmp(rb, '\0');
    for (std::int64_t r = 0; r < ne1; ++r) {
      engine::quantize_row(type, v.data() + r * ne0, tmp.data(), ne0);
      engine::dequantize_row(type, tmp.data(), back.data() + r * ne0, ne0);
    }
    m.weights[name] = std::vector<double>(back.begin(), back.end());
  };
  // A bias: F32, about 0.
  auto add_bias = [&](const std::string& name, std::int64_t ne0) {
    std::vector<float> v(static_cast<std::size_t>(ne0));
    for (float& x : v) x = 0.2f * gauss(rng);
    w.add_tensor(name, GgmlType::kF32, {ne0}, v);
    m.weights[name] = std::vector<double>(v.begin(), v.end());
  };
  const std::int64_t q_dim = static_cast<std::int64_t>(s.n_head) * s.head_dim;
  const std::int64_t kv_dim = static_cast<std::int64_t>(s.n_head_kv) * s.head_dim;
  const float ws = 1.0f / std::sqrt(static_cast<float>(s.n_embd));
  add("token_embd.weight", s.n_embd, s.n_vocab, 1.0f, false);
  add("output_norm.weight", s.n_embd, 1, 0, true);
  if (!s.tied_output) add("output.weight", s.n_embd, s.n_vocab, ws, false);
  if (s.rope_orig_ctx > 0) {
    std::uniform_real_distribution<float> factor(1.0f, 4.0f);
    for (const char* name : {"rope_factors_long.weight", "rope_factors_short.weight"}) {
      std::vector<float> f(static_cast<std::size_t>(s.n_rot / 2));
      for (float& x : f) x = factor(rng);
      w.add_tensor(name, GgmlType::kF32, {s.n_rot / 2}, f);
      m.weights[name] = std::vector<double>(f.begin(), f.end());
    }
  }
  for (int l = 0; l < s.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    add(b + "attn_norm.weight", s.n_embd, 1, 0, true);
    const bool phi3 = s.arch == "phi3";
    std::vector<float> qkv, gate_up;
    add(b + "attn_q.weight", s.n_embd, q_dim, ws, false, phi3 ? &qkv : nullptr);
    add(b + "attn_k.weight", s.n_embd, kv_dim, ws, false, phi3 ? &qkv : nullptr);
    add(b + "attn_v.weight", s.n_embd, kv_dim, ws, false, phi3 ? &qkv : nullptr);
    if (phi3) w.add_tensor(b + "attn_qkv.weight", s.weight_type, {s.n_embd, q_dim + 2 * kv_dim}, qkv);
    add(b + "attn_output.weight", q_dim, s.n_embd, 1.0f / std::sqrt(static_cast<float>(q_dim)), false);
    if (s.arch == "qwen2") {
      add(b + "attn_q.bias", q_dim, 1, 0, true);
      add(b + "attn_k.bias", kv_dim, 1, 0, true);
      add(b + "attn_v.bias", kv_dim, 1, 0, true);
    } else if (s.biases) {
      add_bias(b + "attn_q.bias", q_dim);
      add_bias(b + "attn_k.bias", kv_dim);
      add_bias(b + "attn_v.bias", kv_dim);
    }
    if (s.biases) add_bias(b + "attn_output.bias", s.n_embd);
    if (s.arch == "qwen3" || s.arch == "gemma3") {
      add(b + "attn_q_norm.weight", s.head_dim, 1, 0, true);
      add(b + "attn_k_norm.weight", s.head_dim, 1, 0, true);
    }
    if (s.arch == "gemma2" || s.arch == "gemma3") {
      add(b + "post_attention_norm.weight", s.n_embd, 1, 0, true);
      add(b + "post_ffw_norm.weight", s.n_embd, 1, 0, true);
    }
    add(b + "ffn_norm.weight", s.n_embd, 1, 0, true);
    add(b + "ffn_gate.weight", s.n_embd, s.n_ff, ws, false, phi3 ? &gate_up : nullptr);
    add(b + "ffn_up.weight", s.n_embd, s.n_ff, ws, false, phi3 ? &gate_up : nullptr);
    if (phi3) w.add_tensor(b + "ffn_up.weight", s.weight_type, {s.n_embd, 2 * s.n_ff}, gate_up);
    add(b + "ffn_down.weight", s.n_ff, s.n_embd, 1.0f / std::sqrt(static_cast<float>(s.n_ff)), false);
    if (s.biases) {
      add_bias(b + "ffn_gate.bias", s.n_ff);
      add_bias(b + "ffn_up.bias", s.n_ff);
      add_bias(b + "ffn_down.bias", s.n_embd);
    }
  }
  m.gguf = w.bytes();
  return m;
}

TestModelSpec decoder_spec(const char* arch, int n_embd, int n_head, int n_head_kv, int n_ff, bool tied,
                           engine::GgmlType type, int head_dim) {
  TestModelSpec s;
  s.arch = arch;
  s.n_embd = n_embd;
  s.n_head = n_head;
  s.n_head_kv = n_head_kv;
  s.n_ff = n_ff;
  s.tied_output = tied;
  s.weight_type = type;
  s.head_dim = head_dim;
  s.seed = static_cast<std::uint32_t>(n_embd * 31 + n_head * 7 + n_head_kv + (tied ? 1000 : 0) + static_cast<int>(type));
  return s;
}

BertTestModel make_bert_model(const BertModelSpec& spec) {
  BertTestModel m;
  m.spec = spec;
  const BertModelSpec& s = m.spec;
  const bool nomic = s.arch == "nomic-bert";
  std::mt19937 rng(s.seed);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  GgufWriter w;
  const std::string a = s.arch + ".";
  w.set_string("general.architecture", s.arch_written.empty() ? s.arch : s.arch_written);
  w.set_u32(a + "context_length", static_cast<std::uint32_t>(s.n_ctx));
  w.set_u32(a + "embedding_length", static_cast<std::uint32_t>(s.n_embd));
  w.set_u32(a + "block_count", static_cast<std::uint32_t>(s.n_layer));
  w.set_u32(a + "feed_forward_length", static_cast<std::uint32_t>(s.n_ff));
  w.set_u32(a + "attention.head_count", static_cast<std::uint32_t>(s.meta_n_head >= 0 ? s.meta_n_head : s.n_head));
  w.set_f32(a + "attention.layer_norm_epsilon", s.norm_eps);
  if (s.causal >= 0) w.set_bool(a + "attention.causal", s.causal != 0);
  if (s.pooling >= 0) w.set_u32(a + "pooling_type", static_cast<std::uint32_t>(s.pooling));
  if (nomic) w.set_f32(a + "rope.freq_base", s.rope_base);
  w.set_u32("tokenizer.ggml.token_type_count", static_cast<std::uint32_t>(s.n_token_types));
  if (s.metadata) s.metadata(w);

  // kind: 'w' a matrix or table of weight_type, 'g' a norm gain (about 1),
  // 'b' a bias (about 0); both F32.
  auto add = [&](const std::string& name, std::int64_t ne0, std::int64_t ne1, float scale, char kind) {
    if (name == s.omit_tensor) return;
    if (name == s.misshape_tensor) (ne1 == 1 ? ne0 : ne1) += 1;
    std::vector<float> v(static_cast<std::size_t>(ne0 * ne1));
    for (float& x : v) x = kind == 'g' ? 1.0f + 0.1f * gauss(rng) : scale * gauss(rng);
    const GgmlType type = kind == 'w' ? s.weight_type : GgmlType::kF32;
    std::vector<std::int64_t> ne = ne1 == 1 ? std::vector<std::int64_t>{ne0} : std::vector<std::int64_t>{ne0, ne1};
    w.add_tensor(name, type, ne, v);
    std::vector<float> back(v.size());
    const std::size_t rb = engine::row_bytes(type, ne0);
    std::string tmp(rb, '\0');
    for (std::int64_t r = 0; r < ne1; ++r) {
      engine::quantize_row(type, v.data() + r * ne0, tmp.data(), ne0);
      engine::dequantize_row(type, tmp.data(), back.data() + r * ne0, ne0);
    }
    m.weights[name] = std::vector<double>(back.begin(), back.end());
  };
  const std::int64_t d = s.n_embd, ff = s.n_ff;
  const float ws = 1.0f / std::sqrt(static_cast<float>(d));
  add("token_embd.weight", d, s.n_vocab, 1.0f, 'w');
  add("token_types.weight", d, s.n_token_types, 1.0f, 'w');
  if (!nomic) add("position_embd.weight", d, s.n_ctx, 1.0f, 'w');
  add("token_embd_norm.weight", d, 1, 0, 'g');
  add("token_embd_norm.bias", d, 1, 0.1f, 'b');
  for (int l = 0; l < s.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    if (nomic) {
      add(b + "attn_qkv.weight", d, 3 * d, ws, 'w');
    } else {
      for (const char* t : {"attn_q", "attn_k", "attn_v"}) {
        add(b + t + ".weight", d, d, ws, 'w');
        add(b + t + ".bias", d, 1, 0.1f, 'b');
      }
    }
    add(b + "attn_output.weight", d, d, ws, 'w');
    if (!nomic) add(b + "attn_output.bias", d, 1, 0.1f, 'b');
    add(b + "attn_output_norm.weight", d, 1, 0, 'g');
    add(b + "attn_output_norm.bias", d, 1, 0.1f, 'b');
    add(b + "ffn_up.weight", d, ff, ws, 'w');
    if (nomic) add(b + "ffn_gate.weight", d, ff, ws, 'w');
    else add(b + "ffn_up.bias", ff, 1, 0.1f, 'b');
    add(b + "ffn_down.weight", ff, d, 1.0f / std::sqrt(static_cast<float>(ff)), 'w');
    if (!nomic) add(b + "ffn_down.bias", d, 1, 0.1f, 'b');
    add(b + "layer_output_norm.weight", d, 1, 0, 'g');
    add(b + "layer_output_norm.bias", d, 1, 0.1f, 'b');
  }
  if (s.rank_head == 2) {
    add("cls.weight", d, d, ws, 'w');
    add("cls.bias", d, 1, 0.1f, 'b');
  }
  if (s.rank_head >= 1) {
    add("cls.output.weight", d, s.n_labels, ws, 'w');
    add("cls.output.bias", s.n_labels, 1, 0.1f, 'b');
  }
  if (!s.extra_tensor.empty()) add(s.extra_tensor, d, 1, 0.1f, 'b');
  m.gguf = w.bytes();
  return m;
}

namespace {

using Vec = std::vector<double>;

// y (rows_out) = W (rows_out x n_in) x
Vec matvec(const Vec& w, const Vec& x, std::size_t n_out) {
  const std::size_t n_in = x.size();
  Vec y(n_out, 0.0);
  for (std::size_t r = 0; r < n_out; ++r)
    for (std::size_t k = 0; k < n_in; ++k) y[r] += w[r * n_in + k] * x[k];
  return y;
}

Vec rms_norm(const Vec& x, const double* g, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + eps);
  Vec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * g[i];
  return y;
}

// The first n_rot numbers of a head rotated; frequency i divided by
// factors[i] when given, the rotated numbers times mscale.
void rope(double* v, int n_rot, double pos, double base, bool neox, const double* factors = nullptr,
          double mscale = 1.0) {
  const int half = n_rot / 2;
  for (int i = 0; i < half; ++i) {
    double theta = pos * std::pow(base, -2.0 * i / n_rot);
    if (factors != nullptr) theta /= factors[i];
    const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    const double x0 = v[a], x1 = v[b], c = std::cos(theta) * mscale, sn = std::sin(theta) * mscale;
    v[a] = x0 * c - x1 * sn;
    v[b] = x0 * sn + x1 * c;
  }
}

// The final hidden states (after the output norm), or with `logits` the
// logits made from them.
std::vector<double> reference_pass(const TestModel& model, const std::vector<std::int32_t>& tokens, bool logits_out) {
  const TestModelSpec& s = model.spec;
  auto W = [&](const std::string& n) -> const Vec& { return model.weights.at(n); };
  auto add_bias = [&](Vec& y, const std::string& name) {  // where the file has one
    auto it = model.weights.find(name);
    if (it == model.weights.end()) return;
    for (std::size_t i = 0; i < y.size(); ++i) y[i] += it->second.at(i);
  };
  const std::size_t n = tokens.size(), d = static_cast<std::size_t>(s.n_embd);
  const std::size_t hd = static_cast<std::size_t>(s.head_dim);
  const std::size_t q_dim = static_cast<std::size_t>(s.n_head) * hd, kv_dim = static_cast<std::size_t>(s.n_head_kv) * hd;
  const bool neox = s.arch != "llama" && s.arch != "granite";
  const bool granite = s.arch == "granite";
  const double residual_scale = granite && s.residual_scale > 0 ? s.residual_scale : 1.0;
  const double logit_scale = granite && s.logit_scale > 0 ? s.logit_scale : 1.0;
  const bool use_rope = !(granite && s.rope_finetuned == 0);
  const bool gemma = s.arch == "gemma" || s.arch == "gemma2" || s.arch == "gemma3";
  const bool post_norms = s.arch == "gemma2" || s.arch == "gemma3";
  const bool qk_norm = s.arch == "qwen3" || s.arch == "gemma3";
  // Gemma 2 alternates local and global layers from a local one, Gemma 3
  // has five local ones before each global one (all global without a
  // window); gemma2's window is 4096 unless the file says, its caps 50 and
  // 30.
  const int swa_period = s.arch == "gemma2" ? 2 : s.arch == "gemma3" ? 6 : 0;
  const int window = s.arch == "gemma2" && s.sliding_window == 0 ? 4096 : s.sliding_window;
  const bool gemma2 = s.arch == "gemma2";
  const double attn_cap = gemma2 ? (s.attn_softcap > 0 ? s.attn_softcap : 50.0) : 0.0;
  const double final_cap = gemma2 ? (s.final_softcap > 0 ? s.final_softcap : 30.0) : 0.0;
  // the 27B models' query scale, by layer count
  const bool big = (gemma2 && s.n_layer == 46) || (s.arch == "gemma3" && s.n_layer == 62);
  const double scale = granite && s.attention_scale > 0
                           ? s.attention_scale
                           : 1.0 / std::sqrt(big ? static_cast<double>(s.n_embd / s.n_head) : static_cast<double>(hd));
  auto cap = [](double x, double c) { return c > 0 ? c * std::tanh(x / c) : x; };
  std::vector<Vec> x(n);
  for (std::size_t t = 0; t < n; ++t) {
    x[t] = Vec(W("token_embd.weight").begin() + static_cast<std::ptrdiff_t>(tokens[t] * d),
               W("token_embd.weight").begin() + static_cast<std::ptrdiff_t>((tokens[t] + 1) * d));
    if (gemma)
      for (double& e : x[t]) e *= std::sqrt(static_cast<double>(d));
    if (granite && s.embedding_scale > 0)
      for (double& e : x[t]) e *= s.embedding_scale;
  }
  for (int l = 0; l < s.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    const bool swa = swa_period > 0 && window > 0 && (l + 1) % swa_period != 0;
    const bool local_rope = swa && s.arch == "gemma3";  // base 10000, unscaled
    const double base = local_rope ? 10000.0 : s.rope_base;
    const double pos_scale = s.rope_linear > 0 && !local_rope ? 1.0 / s.rope_linear : 1.0;
    const double* factors = nullptr;
    if (s.rope_orig_ctx > 0)
      factors = W(s.n_ctx > s.rope_orig_ctx ? "rope_factors_long.weight" : "rope_factors_short.weight").data();
    const double mscale = s.rope_attn_factor > 0 ? s.rope_attn_factor : 1.0;
    std::vector<Vec> q(n), k(n), v(n);
    for (std::size_t t = 0; t < n; ++t) {
      Vec h = rms_norm(x[t], W(b + "attn_norm.weight").data(), 1e-5);
      q[t] = matvec(W(b + "attn_q.weight"), h, q_dim);
      k[t] = matvec(W(b + "attn_k.weight"), h, kv_dim);
      v[t] = matvec(W(b + "attn_v.weight"), h, kv_dim);
      add_bias(q[t], b + "attn_q.bias");
      add_bias(k[t], b + "attn_k.bias");
      add_bias(v[t], b + "attn_v.bias");
      for (int h2 = 0; h2 < s.n_head; ++h2) {
        double* qh = q[t].data() + h2 * hd;
        if (qk_norm) {
          Vec tmp = rms_norm(Vec(qh, qh + hd), W(b + "attn_q_norm.weight").data(), 1e-5);
          std::copy(tmp.begin(), tmp.end(), qh);
        }
        if (use_rope) rope(qh, s.n_rot, static_cast<double>(t) * pos_scale, base, neox, factors, mscale);
      }
      for (int h2 = 0; h2 < s.n_head_kv; ++h2) {
        double* kh = k[t].data() + h2 * hd;
        if (qk_norm) {
          Vec tmp = rms_norm(Vec(kh, kh + hd), W(b + "attn_k_norm.weight").data(), 1e-5);
          std::copy(tmp.begin(), tmp.end(), kh);
        }
        if (use_rope) rope(kh, s.n_rot, static_cast<double>(t) * pos_scale, base, neox, factors, mscale);
      }
    }
    for (std::size_t t = 0; t < n; ++t) {
      Vec att(q_dim, 0.0);
      // a local layer sees the last `window` positions, t among them
      const std::size_t first = swa && t + 1 > static_cast<std::size_t>(window) ? t + 1 - static_cast<std::size_t>(window) : 0;
      for (int h2 = 0; h2 < s.n_head; ++h2) {
        const int kvh = h2 / (s.n_head / s.n_head_kv);
        std::vector<double> sc(t + 1, 0.0);
        double mx = -1e300;
        for (std::size_t p = first; p <= t; ++p) {
          double dot = 0;
          for (std::size_t i = 0; i < hd; ++i) dot += q[t][h2 * hd + i] * k[p][kvh * hd + i];
          sc[p] = cap(dot * scale, attn_cap);
          mx = std::max(mx, sc[p]);
        }
        double z = 0;
        for (std::size_t p = first; p <= t; ++p) z += sc[p] = std::exp(sc[p] - mx);
        for (std::size_t p = first; p <= t; ++p)
          for (std::size_t i = 0; i < hd; ++i) att[h2 * hd + i] += sc[p] / z * v[p][kvh * hd + i];
      }
      Vec o = matvec(W(b + "attn_output.weight"), att, d);
      add_bias(o, b + "attn_output.bias");
      if (post_norms) o = rms_norm(o, W(b + "post_attention_norm.weight").data(), 1e-5);
      for (std::size_t i = 0; i < d; ++i) x[t][i] += residual_scale * o[i];
      Vec h = rms_norm(x[t], W(b + "ffn_norm.weight").data(), 1e-5);
      Vec g = matvec(W(b + "ffn_gate.weight"), h, static_cast<std::size_t>(s.n_ff));
      Vec u = matvec(W(b + "ffn_up.weight"), h, static_cast<std::size_t>(s.n_ff));
      add_bias(g, b + "ffn_gate.bias");
      add_bias(u, b + "ffn_up.bias");
      for (std::size_t i = 0; i < g.size(); ++i) {
        const double a = g[i];
        const double act = gemma ? 0.5 * a * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (a + 0.044715 * a * a * a)))
                                 : a / (1.0 + std::exp(-a));
        g[i] = act * u[i];
      }
      Vec dn = matvec(W(b + "ffn_down.weight"), g, d);
      add_bias(dn, b + "ffn_down.bias");
      if (post_norms) dn = rms_norm(dn, W(b + "post_ffw_norm.weight").data(), 1e-5);
      for (std::size_t i = 0; i < d; ++i) x[t][i] += residual_scale * dn[i];
    }
  }
  const Vec& out = s.tied_output ? W("token_embd.weight") : W("output.weight");
  std::vector<double> result;
  for (std::size_t t = 0; t < n; ++t) {
    Vec h = rms_norm(x[t], W("output_norm.weight").data(), 1e-5);
    if (!logits_out) {
      result.insert(result.end(), h.begin(), h.end());
      continue;
    }
    Vec l = matvec(out, h, static_cast<std::size_t>(s.n_vocab));
    for (double& e : l) e = cap(e, final_cap) / logit_scale;
    result.insert(result.end(), l.begin(), l.end());
  }
  return result;
}

}  // namespace

std::vector<double> reference_forward(const TestModel& model, const std::vector<std::int32_t>& tokens) {
  return reference_pass(model, tokens, true);
}

std::vector<double> reference_hidden(const TestModel& model, const std::vector<std::int32_t>& tokens) {
  return reference_pass(model, tokens, false);
}

}  // namespace airlock::testing
