// Markdown to text: keep what a reader reads, drop the syntax. A line-based
// pass handles blocks (front matter, fences, headings, lists, quotes, table
// delimiter rows, reference definitions); an inline pass handles spans
// (emphasis, code, links, images, HTML tags, escapes). Not a full CommonMark
// parser: the goal is clean text for retrieval, in linear time on any input
// (brackets are matched with a stack, never by rescanning).
#include <algorithm>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "text_builder.h"

namespace airlock::rag::internal {
namespace {

// Lines longer than this keep their brackets: matching them needs 4 bytes
// of memory per byte of line.
constexpr std::size_t kMaxLinkLineBytes = 1 << 20;
constexpr std::uint32_t kNone = UINT32_MAX;

bool is_space(char c) { return c == ' ' || c == '\t'; }
bool is_alnum(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         static_cast<unsigned char>(c) >= 0x80;
}
bool is_punct(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u > 0x20 && u < 0x7f && !is_alnum(c);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// True when s (trimmed) is only ch repeated at least min times, spaces allowed.
bool only_char(std::string_view s, char ch, std::size_t min) {
  std::size_t n = 0;
  for (char c : s) {
    if (c == ch) ++n;
    else if (!is_space(c)) return false;
  }
  return n >= min;
}

// For each '[' and '(' the index of its matching closer, else kNone.
void match_brackets(std::string_view s, char open, char close, std::vector<std::uint32_t>* match) {
  std::vector<std::uint32_t> stack;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
      continue;
    }
    if (s[i] == open) stack.push_back(static_cast<std::uint32_t>(i));
    else if (s[i] == close && !stack.empty()) {
      (*match)[stack.back()] = static_cast<std::uint32_t>(i);
      stack.pop_back();
    }
  }
}

class InlinePass {
 public:
  explicit InlinePass(bool* in_comment) : in_comment_(in_comment) {}

  std::string run(std::string_view s) {
    // Where each maximal run of backticks starts, by its length: a code
    // span's closer is the first run of exactly its opener's length after
    // it, found by a binary search. (Searching the text for each opener cost
    // O(L^1.5) on a line of runs of lengths 1, 2, 3, ...)
    runs_.clear();
    for (std::size_t k = 0; k < s.size();) {
      if (s[k] != '`') {
        ++k;
        continue;
      }
      std::size_t e = k;
      while (e < s.size() && s[e] == '`') ++e;
      runs_[e - k].push_back(k);
      k = e;
    }
    std::string out;
    out.reserve(s.size());
    const bool links = s.size() <= kMaxLinkLineBytes;
    std::vector<std::uint32_t> square, round, jump;
    if (links) {
      square.assign(s.size(), kNone);
      round.assign(s.size(), kNone);
      jump.assign(s.size(), kNone);  // at a link's ']', continue after its target
      match_brackets(s, '[', ']', &square);
      match_brackets(s, '(', ')', &round);
    }
    std::size_t next_gt = 0;  // cached position of the next '>' (linear tag scanning)
    std::size_t i = 0;
    while (i < s.size()) {
      if (*in_comment_) {
        const auto end = s.find("-->", i);
        if (end == std::string_view::npos) break;
        *in_comment_ = false;
        i = end + 3;
        continue;
      }
      if (links && jump[i] != kNone) {
        i = jump[i];
        continue;
      }
      const char c = s[i];
      if (c == '\\' && i + 1 < s.size() && is_punct(s[i + 1])) {
        out += s[i + 1];
        i += 2;
        continue;
      }
      if (c == '`') {
        std::size_t n = 0;
        while (i + n < s.size() && s[i + n] == '`') ++n;
        const std::string_view fence = s.substr(i, n);
        // The closing run must be exactly n backticks long (runs_ holds
        // maximal runs; the search starts past this one).
        std::size_t close = std::string_view::npos;
        if (auto it = runs_.find(n); it != runs_.end()) {
          auto at = std::lower_bound(it->second.begin(), it->second.end(), i + n);
          if (at != it->second.end()) close = *at;
        }
        if (close == std::string_view::npos) {
          out.append(fence);
          i += n;
          continue;
        }
        out.append(s.substr(i + n, close - i - n));
        i = close + n;
        continue;
      }
      if (links && (c == '[' || (c == '!' && i + 1 < s.size() && s[i + 1] == '['))) {
        const std::size_t open = c == '!' ? i + 1 : i;
        const std::uint32_t close = square[open];
        if (close != kNone) {
          const std::size_t after = close + 1;
          std::uint32_t resume = static_cast<std::uint32_t>(after);  // [text] alone: drop the brackets
          if (after < s.size() && s[after] == '(' && round[after] != kNone) resume = round[after] + 1;
          else if (after < s.size() && s[after] == '[' && square[after] != kNone) resume = square[after] + 1;
          jump[close] = resume;
          i = open + 1;
          continue;
        }
      }
      if (c == '<') {
        if (s.substr(i).starts_with("<!--")) {
          *in_comment_ = true;
          i += 4;
          continue;
        }
        if (next_gt != std::string_view::npos && next_gt <= i) next_gt = s.find('>', i);
        const bool tag_start = i + 1 < s.size() && (is_alnum(s[i + 1]) || s[i + 1] == '/' || s[i + 1] == '!' || s[i + 1] == '?');
        if (tag_start && next_gt != std::string_view::npos) {
          const std::string_view inner = s.substr(i + 1, next_gt - i - 1);
          if (inner.find("://") != std::string_view::npos || inner.starts_with("mailto:")) out.append(inner);  // autolink
          i = next_gt + 1;
          continue;
        }
      }
      if (c == '*' || c == '_' || c == '~') {
        std::size_t n = 0;
        while (i + n < s.size() && s[i + n] == c) ++n;
        const char prev = i > 0 ? s[i - 1] : ' ';
        const char next = i + n < s.size() ? s[i + n] : ' ';
        bool marker = !is_space(prev) || !is_space(next);
        if (c == '_' && is_alnum(prev) && is_alnum(next)) marker = false;  // snake_case
        if (c == '~' && n != 2) marker = false;
        if (!marker) out.append(s.substr(i, n));
        i += n;
        continue;
      }
      if (c == '|') {
        out += ' ';
        ++i;
        continue;
      }
      if (c == '&') {
        static constexpr std::pair<std::string_view, std::string_view> kEntities[] = {
            {"&amp;", "&"}, {"&lt;", "<"}, {"&gt;", ">"}, {"&quot;", "\""}, {"&#39;", "'"}, {"&nbsp;", " "}};
        bool decoded = false;
        for (const auto& [name, value] : kEntities)
          if (s.substr(i).starts_with(name)) {
            out.append(value);
            i += name.size();
            decoded = true;
            break;
          }
        if (decoded) continue;
      }
      out += c;
      ++i;
    }
    return out;
  }

 private:
  bool* in_comment_;
  std::unordered_map<std::size_t, std::vector<std::size_t>> runs_;  // start of each backtick run, by length
};

// Strips a list marker ("- ", "* ", "+ ", "12. ", "3) ") and a task box.
bool strip_list_marker(std::string_view* t) {
  std::string_view s = *t;
  std::size_t n = 0;
  if (!s.empty() && (s[0] == '-' || s[0] == '*' || s[0] == '+')) {
    n = 1;
  } else {
    while (n < s.size() && n < 9 && s[n] >= '0' && s[n] <= '9') ++n;
    if (n == 0 || n >= s.size() || (s[n] != '.' && s[n] != ')')) return false;
    ++n;
  }
  if (n < s.size() && !is_space(s[n])) return false;
  s = trim(s.substr(n));
  if (s.starts_with("[ ]") || s.starts_with("[x]") || s.starts_with("[X]")) s = trim(s.substr(3));
  *t = s;
  return true;
}

}  // namespace

Result<ExtractedDocument> extract_markdown(std::string_view bytes, const ExtractLimits& limits) {
  AIRLOCK_RETURN_IF_ERROR(check_text_input(bytes, "markdown"));
  // Lines are taken one at a time (a vector of them would hold 16 bytes a
  // line: 512 MB for 32 MB of newlines).
  auto next_line = [](std::string_view* rest) {
    const auto nl = rest->find('\n');
    std::string_view line = rest->substr(0, nl);
    *rest = nl == std::string_view::npos ? std::string_view() : rest->substr(nl + 1);
    if (line.ends_with('\r')) line.remove_suffix(1);
    return line;
  };
  std::string_view body = strip_bom(bytes);
  if (std::string_view r = body; !r.empty() && trim(next_line(&r)) == "---") {  // YAML front matter
    while (!r.empty()) {
      const std::string_view l = trim(next_line(&r));
      if (l == "---" || l == "...") {
        body = r;
        break;
      }
    }
  }

  TextBuilder text(limits.max_output_bytes);
  std::string title;
  bool in_comment = false;
  InlinePass inline_pass(&in_comment);
  char fence_char = 0;
  std::size_t fence_len = 0;
  std::string previous_text;  // the last paragraph line, for setext headings
  for (std::string_view rest = body; !rest.empty();) {
    const std::string_view raw = next_line(&rest);
    std::string_view t = trim(raw);
    if (fence_char != 0) {  // inside a fenced code block: text verbatim
      if (only_char(t, fence_char, fence_len)) {
        fence_char = 0;
        text.paragraph_break();
        continue;
      }
      AIRLOCK_RETURN_IF_ERROR(text.append(raw));
      text.line_break();
      continue;
    }
    if (!in_comment && (t.starts_with("```") || t.starts_with("~~~"))) {
      fence_char = t[0];
      fence_len = t.find_first_not_of(fence_char);
      if (fence_len == std::string_view::npos) fence_len = t.size();
      text.paragraph_break();
      previous_text.clear();
      continue;
    }
    if (!in_comment) {
      if (t.empty() || only_char(t, '-', 3) || only_char(t, '*', 3) || only_char(t, '_', 3) || only_char(t, '=', 1)) {
        // A blank line, a thematic break, or a setext underline.
        if (!t.empty() && (t[0] == '=' || t[0] == '-') && !previous_text.empty() && title.empty())
          title = one_line(previous_text, kMaxTitleBytes);
        text.paragraph_break();
        previous_text.clear();
        continue;
      }
      // A table delimiter row: |---|:-:|
      if (t.find('|') != std::string_view::npos && t.find('-') != std::string_view::npos &&
          t.find_first_not_of("|-: \t") == std::string_view::npos)
        continue;
      // A reference definition: [label]: url
      if (t.starts_with('[') && t.find("]:") != std::string_view::npos && t.find("]:") == t.find(']')) continue;
      while (t.starts_with('>')) t = trim(t.substr(1));
    }
    bool heading = false;
    if (!in_comment && t.starts_with('#')) {
      const std::size_t n = t.find_first_not_of('#');
      if (n <= 6 && (n == std::string_view::npos || is_space(t[n]))) {
        heading = true;
        t = n == std::string_view::npos ? std::string_view() : trim(t.substr(n));
        const std::size_t end = t.find_last_not_of('#');  // closing #'s
        if (end != std::string_view::npos && end + 1 < t.size() && is_space(t[end])) t = trim(t.substr(0, end));
        else if (end == std::string_view::npos) t = {};
      }
    }
    bool item = false;
    if (!heading && !in_comment) item = strip_list_marker(&t);
    const std::string line = inline_pass.run(t);
    if (heading) {
      text.paragraph_break();
      if (title.empty()) title = one_line(line, kMaxTitleBytes);
    } else if (item) {
      text.line_break();
    }
    AIRLOCK_RETURN_IF_ERROR(text.append(line));
    if (heading) {
      text.paragraph_break();
      previous_text.clear();
    } else {
      text.line_break();
      previous_text = line;
    }
  }
  AIRLOCK_ASSIGN_OR_RETURN(std::string out, text.finish());
  return ExtractedDocument{DocFormat::kMarkdown, std::move(title), std::move(out)};
}

}  // namespace airlock::rag::internal
