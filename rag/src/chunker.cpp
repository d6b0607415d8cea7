#include "airlock/rag/chunker.h"

#include <algorithm>
#include <string>

namespace airlock::rag {
namespace {

// A span of the input that is never cut inside a chunk.
struct Unit {
  std::size_t begin, end, n_tokens;
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Largest n <= want such that s[0, n) does not end inside a UTF-8 sequence.
std::size_t utf8_floor(std::string_view s, std::size_t want) {
  std::size_t n = std::min(want, s.size());
  while (n > 0 && n < s.size() && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return n;
}

class Splitter {
 public:
  Splitter(std::string_view text, const TokenCounter& count, std::size_t max_tokens)
      : text_(text), count_(count), max_tokens_(max_tokens), max_bytes_(max_tokens * 32) {}

  std::vector<Unit> units() {
    std::vector<Unit> out;
    std::size_t i = 0;
    const std::size_t n = text_.size();
    while (i < n) {
      while (i < n && is_space(text_[i])) ++i;
      if (i >= n) break;
      // A sentence ends at a newline, or after . ! ? (and closing quotes or
      // brackets) followed by white space.
      std::size_t j = i;
      while (j < n && text_[j] != '\n') {
        const char c = text_[j];
        ++j;
        if (c == '.' || c == '!' || c == '?') {
          while (j < n && (text_[j] == '"' || text_[j] == '\'' || text_[j] == ')' || text_[j] == ']')) ++j;
          if (j >= n || is_space(text_[j])) break;
        }
      }
      std::size_t e = j;
      while (e > i && is_space(text_[e - 1])) --e;
      sentence(i, e, out);
      i = j;
    }
    return out;
  }

 private:
  std::size_t count(std::size_t b, std::size_t e) const { return count_(text_.substr(b, e - b)); }

  void sentence(std::size_t b, std::size_t e, std::vector<Unit>& out) {
    if (e - b <= max_bytes_) {
      const std::size_t t = count(b, e);
      if (t <= max_tokens_) {
        out.push_back({b, e, t});
        return;
      }
    }
    // Too long: pack its words into units of at most max_tokens.
    std::size_t ub = std::string_view::npos, ue = 0, ut = 0;
    auto flush = [&] {
      if (ub != std::string_view::npos) out.push_back({ub, ue, ut});
      ub = std::string_view::npos;
      ut = 0;
    };
    std::size_t i = b;
    while (i < e) {
      while (i < e && is_space(text_[i])) ++i;
      if (i >= e) break;
      std::size_t j = i;
      while (j < e && !is_space(text_[j])) ++j;
      const std::size_t wt = j - i <= max_bytes_ ? count(i, j) : max_tokens_ + 1;
      if (wt > max_tokens_) {
        flush();
        long_word(i, j, out);
      } else {
        if (ub != std::string_view::npos && (ut + wt > max_tokens_ || j - ub > max_bytes_)) flush();
        if (ub == std::string_view::npos) ub = i;
        ue = j;
        ut += wt;
      }
      i = j;
    }
    flush();
  }

  // A single word over the limits: windows cut at character boundaries.
  void long_word(std::size_t b, std::size_t e, std::vector<Unit>& out) {
    while (b < e) {
      std::string_view rest = text_.substr(b, e - b);
      std::size_t len = utf8_floor(rest, max_bytes_);
      if (len == 0) len = std::min<std::size_t>(rest.size(), 4);  // a lone broken sequence
      std::size_t t = count(b, b + len);
      while (t > max_tokens_ && len > 1) {
        std::size_t shorter = utf8_floor(rest, len / 2);
        len = shorter == 0 ? 1 : shorter;
        t = count(b, b + len);
      }
      out.push_back({b, b + len, t});
      b += len;
    }
  }

  std::string_view text_;
  const TokenCounter& count_;
  std::size_t max_tokens_;
  std::size_t max_bytes_;  // no unit is longer than this, whatever the tokenizer says
};

}  // namespace

Result<std::vector<TextChunk>> chunk_text(std::string_view text, const TokenCounter& count_tokens,
                                          const ChunkOptions& options) {
  if (options.max_tokens == 0) return invalid_argument("chunk size must be at least 1 token");
  if (options.overlap_tokens >= options.max_tokens)
    return invalid_argument("chunk overlap must be smaller than the chunk size");
  Splitter splitter(text, count_tokens, options.max_tokens);
  const std::vector<Unit> units = splitter.units();
  const std::size_t max_bytes = options.max_tokens * 32;

  std::vector<TextChunk> chunks;
  std::size_t first = 0;
  while (first < units.size()) {
    // Greedy: whole units while the estimate fits, then the exact count.
    std::size_t last = first, estimate = units[first].n_tokens;
    while (last + 1 < units.size() && estimate + units[last + 1].n_tokens <= options.max_tokens &&
           units[last + 1].end - units[first].begin <= max_bytes) {
      ++last;
      estimate += units[last].n_tokens;
    }
    TextChunk c;
    for (;;) {
      c.begin = units[first].begin;
      c.end = units[last].end;
      c.text = std::string(text.substr(c.begin, c.end - c.begin));
      c.n_tokens = count_tokens(c.text);
      if (c.n_tokens <= options.max_tokens || last == first) break;
      --last;  // the joined text tokenizes longer than its parts
    }
    chunks.push_back(std::move(c));
    if (last + 1 >= units.size()) break;
    if (chunks.size() >= options.max_chunks)
      return invalid_argument("the text makes more than " + std::to_string(options.max_chunks) + " chunks");
    // The next chunk repeats trailing units of this one, up to the overlap
    // in tokens and in bytes (at the chunk's own 32 bytes a token), but
    // always moves forward. Without the byte bound, units the tokenizer
    // counts as no tokens (a line of U+3000 or of zero-width spaces) would
    // all be repeated: one chunk per unit, each nearly max_bytes long.
    std::size_t next = last + 1, overlap = 0;
    const std::size_t overlap_bytes = options.overlap_tokens * 32;
    while (next > first + 1 && overlap + units[next - 1].n_tokens <= options.overlap_tokens &&
           units[last].end - units[next - 1].begin <= overlap_bytes) {
      --next;
      overlap += units[next].n_tokens;
    }
    first = next;
  }
  return chunks;
}

}  // namespace airlock::rag
