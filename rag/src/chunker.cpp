#include "airlock/rag/chunker.h"

#include <algorithm>
#include <string>

#include "airlock/common/utf8.h"

namespace airlock::rag {
namespace {

// A span of the input that is never cut inside a chunk.
struct Unit {
  std::size_t begin, end, n_tokens;
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Largest n <= want such that s[0, n) does not end inside a UTF-8 sequence.
std::size_t utf8_floor(std::string_view s, std::size_t want) {
  std::size_t n = std::min(want, s.size());
  while (n > 0 && n < s.size() && is_continuation(s[n])) --n;
  return n;
}

// Characters of the scripts written without spaces between words (Chinese,
// Japanese) and of Korean, with their punctuation and fullwidth forms: a
// line may be broken before or after any of them (Unicode's line breaking
// classes ID, H2/H3, and the CJK punctuation around them).
bool is_cjk(char32_t c) {
  return (c >= 0x1100 && c <= 0x11FF) ||    // Hangul Jamo
         (c >= 0x2E80 && c <= 0x2FFF) ||    // CJK and Kangxi radicals
         (c >= 0x3000 && c <= 0x33FF) ||    // CJK punctuation, kana, Bopomofo, compatibility Jamo, enclosed
         (c >= 0x3400 && c <= 0x4DBF) ||    // CJK extension A
         (c >= 0x4E00 && c <= 0x9FFF) ||    // CJK unified ideographs
         (c >= 0xA960 && c <= 0xA97F) ||    // Hangul Jamo extended A
         (c >= 0xAC00 && c <= 0xD7FF) ||    // Hangul syllables, Jamo extended B
         (c >= 0xF900 && c <= 0xFAFF) ||    // CJK compatibility ideographs
         (c >= 0xFE30 && c <= 0xFE4F) ||    // CJK compatibility forms
         (c >= 0xFF00 && c <= 0xFFEF) ||    // halfwidth and fullwidth forms
         (c >= 0x20000 && c <= 0x3FFFF);    // CJK extensions B and later
}

// Ideographic and fullwidth sentence ends: 。 ！ ？ ． ｡. They end a
// sentence with no space after them.
bool is_cjk_terminator(char32_t c) { return c == 0x3002 || c == 0xFF01 || c == 0xFF1F || c == 0xFF0E || c == 0xFF61; }

// Closing brackets and quotes of CJK text that stay with the sentence end
// before them: 」 』 ） ］ ｝ 〕 〉 》 】 〗 〙 〛 〞 〟 ＂ ＇ ｣.
bool is_cjk_closer(char32_t c) {
  switch (c) {
    case 0x300D: case 0x300F: case 0xFF09: case 0xFF3D: case 0xFF5D: case 0x3015: case 0x3009: case 0x300B:
    case 0x3011: case 0x3017: case 0x3019: case 0x301B: case 0x301E: case 0x301F: case 0xFF02: case 0xFF07:
    case 0xFF63:
      return true;
    default:
      return false;
  }
}

// Chinese (and Japanese in “ ”) closing quotes: closers after an ideographic
// sentence end only, since Latin text uses them too.
bool is_curly_closer(char32_t c) { return c == 0x201D || c == 0x2019; }

// Ends of clauses inside a sentence, where an over-long CJK sentence is
// cut first: 、 ， ； ： ､.
bool is_cjk_clause_end(char32_t c) { return c == 0x3001 || c == 0xFF0C || c == 0xFF1B || c == 0xFF1A || c == 0xFF64; }

bool is_alnum_or_fullwidth(char32_t c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= 0xFF10 && c <= 0xFF19) ||
         (c >= 0xFF21 && c <= 0xFF3A) || (c >= 0xFF41 && c <= 0xFF5A);
}

// Characters a piece should not begin with (closing punctuation, small
// kana, the prolonged sound mark) or end with (opening brackets): where a
// run of CJK text must be cut, the cut moves to a boundary between others.
bool no_break_before(char32_t c) {
  if (is_cjk_terminator(c) || is_cjk_closer(c) || is_curly_closer(c) || is_cjk_clause_end(c)) return true;
  switch (c) {
    case 0x3041: case 0x3043: case 0x3045: case 0x3047: case 0x3049: case 0x3063: case 0x3083: case 0x3085:
    case 0x3087: case 0x308E: case 0x3095: case 0x3096: case 0x30A1: case 0x30A3: case 0x30A5: case 0x30A7:
    case 0x30A9: case 0x30C3: case 0x30E3: case 0x30E5: case 0x30E7: case 0x30EE: case 0x30F5: case 0x30F6:
    case 0x30FC: case 0x3005: case 0x309D: case 0x309E: case 0x30FD: case 0x30FE: case 0x30FB:
      return true;
    default:
      return false;
  }
}
bool no_break_after(char32_t c) {
  switch (c) {
    case 0x300C: case 0x300E: case 0xFF08: case 0xFF3B: case 0xFF5B: case 0x3014: case 0x3008: case 0x300A:
    case 0x3010: case 0x3016: case 0x3018: case 0x301A: case 0x301D: case 0x201C: case 0x2018: case 0xFF62:
      return true;
    default:
      return false;
  }
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
      // A sentence ends at a newline; after . ! ? (and closing quotes or
      // brackets) followed by white space, the end of the text or CJK
      // text; or after an ideographic or fullwidth sentence end (and its
      // closing brackets or quotes), space or not.
      std::size_t j = i;
      while (j < n && text_[j] != '\n') {
        const char c = text_[j];
        if (static_cast<unsigned char>(c) >= 0x80) {
          std::size_t len = 0;
          const char32_t cp = next_code_point(text_, j, &len);
          j += len;
          if (is_cjk_terminator(cp) && !(cp == 0xFF0E && j < n && is_alnum_or_fullwidth(code_point_at(j)))) {
            j = after_sentence_end(j, /*curly_quotes=*/true);
            break;
          }
          continue;
        }
        ++j;
        if (c == '.' || c == '!' || c == '?') {
          while (j < n && (text_[j] == '"' || text_[j] == '\'' || text_[j] == ')' || text_[j] == ']')) ++j;
          if (j >= n || is_space(text_[j])) break;
          if (static_cast<unsigned char>(text_[j]) >= 0x80 && is_cjk(code_point_at(j))) {
            j = after_sentence_end(j, /*curly_quotes=*/false);
            break;
          }
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

  char32_t code_point_at(std::size_t i) const {
    std::size_t len = 0;
    return next_code_point(text_, i, &len);
  }

  // The code point that ends just before `p` (> lo), and its length.
  char32_t code_point_before(std::size_t lo, std::size_t p, std::size_t* len) const {
    std::size_t q = p - 1;
    while (q > lo && p - q < 4 && is_continuation(text_[q])) --q;
    std::size_t n = 0;
    const char32_t c = next_code_point(text_, q, &n);
    if (q + n != p) {  // not a whole sequence ending at p: the byte alone
      *len = 1;
      return 0xFFFD;
    }
    *len = n;
    return c;
  }

  // Past the further sentence ends, closing brackets and quotes that
  // follow a sentence end at `j` ("！？」", "。）", "?」").
  std::size_t after_sentence_end(std::size_t j, bool curly_quotes) const {
    const std::size_t n = text_.size();
    while (j < n) {
      const char c = text_[j];
      if (c == '"' || c == '\'' || c == ')' || c == ']' || c == '.' || c == '!' || c == '?') {
        ++j;
        continue;
      }
      if (static_cast<unsigned char>(c) < 0x80) break;
      std::size_t len = 0;
      const char32_t cp = next_code_point(text_, j, &len);
      if (!is_cjk_terminator(cp) && !is_cjk_closer(cp) && !(curly_quotes && is_curly_closer(cp))) break;
      j += len;
    }
    return j;
  }

  // End of the word that starts at i (< e): white space ends a word, and
  // so does a CJK clause end (、，；：), kept with the clause before it.
  std::size_t word_end(std::size_t i, std::size_t e) const {
    std::size_t j = i;
    while (j < e && !is_space(text_[j])) {
      if (static_cast<unsigned char>(text_[j]) < 0x80) {
        ++j;
        continue;
      }
      std::size_t len = 0;
      const char32_t cp = next_code_point(text_, j, &len);
      j = std::min(j + len, e);
      if (is_cjk_clause_end(cp)) break;
    }
    return j;
  }

  void sentence(std::size_t b, std::size_t e, std::vector<Unit>& out) {
    if (e - b <= max_bytes_) {
      const std::size_t t = count(b, e);
      if (t <= max_tokens_) {
        out.push_back({b, e, t});
        return;
      }
    }
    // Too long: pack its words (and CJK clauses) into units of at most
    // max_tokens.
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
      const std::size_t j = word_end(i, e);
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

  // A single word over the limits (a run of CJK text without punctuation,
  // a long token): pieces as long as the limits allow, each cut at a
  // character boundary, preferably one next to a CJK character.
  void long_word(std::size_t b, std::size_t e, std::vector<Unit>& out) {
    std::size_t hint = 0;  // the last piece's length: where to look first for the next
    while (b < e) {
      std::size_t t = 0;
      std::size_t len = fit(b, e, hint, &t);
      if (b + len < e) {
        const std::size_t at = break_before(b, b + len);
        if (at != b + len) {
          const std::size_t shorter_t = count(b, at);
          if (shorter_t <= max_tokens_) {
            len = at - b;
            t = shorter_t;
          }
        }
      }
      out.push_back({b, b + len, t});
      hint = len;
      b += len;
    }
  }

  // The longest prefix of [b, e) that ends at a character boundary, is at
  // most max_bytes long and counts at most max_tokens tokens (and its
  // count, in *n_tokens); at least one whole character, whatever it
  // counts. Searched by interpolation on the token count (nearly linear in
  // the length), every other step halving, so a piece costs a few counts.
  std::size_t fit(std::size_t b, std::size_t e, std::size_t hint, std::size_t* n_tokens) const {
    const std::string_view rest = text_.substr(b, e - b);
    auto floor_at = [&](std::size_t want) { return utf8_floor(rest, want); };
    auto one_more = [&](std::size_t at) {  // the boundary after the character at `at`
      std::size_t q = at + 1;
      while (q < rest.size() && q - at < 4 && is_continuation(rest[q])) ++q;
      return q;
    };
    std::size_t cap = floor_at(max_bytes_);
    if (cap == 0) cap = one_more(0);
    // lo: the longest length known to fit (0 fits); hi: the shortest known
    // not to (0: none known yet).
    std::size_t lo = 0, lo_t = 0, hi = 0, hi_t = 0;
    std::size_t x = hint > 0 && hint < cap ? floor_at(hint) : cap;
    if (x == 0) x = one_more(0);
    for (int step = 0; step < 64; ++step) {
      const std::size_t t = count(b, b + x);
      if (t <= max_tokens_) {
        lo = x;
        lo_t = t;
      } else {
        hi = x;
        hi_t = t;
      }
      if (lo == cap) break;
      // The next length to try, strictly between lo and hi.
      std::size_t want;
      if (hi == 0) {
        want = lo_t == 0 ? cap : std::min<std::size_t>(cap, lo * max_tokens_ / lo_t);
      } else if (step % 2 == 0) {
        const double span = static_cast<double>(hi_t - lo_t);
        want = lo + static_cast<std::size_t>(static_cast<double>(hi - lo) *
                                             (static_cast<double>(max_tokens_ - lo_t) + 0.5) / span);
      } else {
        want = lo + (hi - lo) / 2;
      }
      std::size_t next = floor_at(want);
      if (next <= lo) next = one_more(lo);
      if (hi != 0 && next >= hi) break;  // no boundary between them: lo is the longest
      x = next;
    }
    if (lo == 0) {  // not even one character fits: it goes alone
      lo = one_more(0);
      lo_t = count(b, b + lo);
    }
    *n_tokens = lo_t;
    return lo;
  }

  // Where to cut a run of text that does not fit before `p` (b < p): p
  // itself when it lies next to a CJK character (and not before closing
  // punctuation or after an opening bracket), else the last such boundary
  // in the second half of [b, p), else p (a long Latin token).
  std::size_t break_before(std::size_t b, std::size_t p) const {
    const std::size_t stop = b + (p - b) / 2;
    std::size_t at = p, next_len = 0;
    char32_t next = next_code_point(text_, at, &next_len);
    while (at > stop) {
      std::size_t len = 0;
      const char32_t prev = code_point_before(b, at, &len);
      if ((is_cjk(prev) || is_cjk(next)) && !no_break_before(next) && !no_break_after(prev)) return at;
      next = prev;
      at -= len;
    }
    return p;
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
