// SpecialMatcher (engine/src/special_matcher.h): the specials it takes are
// those of a search per special, longest first (checked against that search
// written out here, on random specials and texts), and its work grows
// linearly with the text whatever the specials (counted, not timed).
#include "special_matcher.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace airlock::engine {
namespace {

struct Special {
  std::string text;
  bool control;
};

using Matches = std::vector<SpecialMatcher::Match>;

SpecialMatcher make_matcher(const std::vector<Special>& specials) {
  std::vector<SpecialMatcher::Special> by_rank;
  for (const Special& s : specials) by_rank.push_back({s.text, s.control});
  return SpecialMatcher(by_rank);
}

// The reference (llama.cpp's order, quadratic): each special, longest first
// and by rank among equals, takes the leftmost occurrences in each span
// that overlap none taken before; control ones skip literal spans.
Matches search_per_special(const std::string& text, const std::vector<Special>& specials,
                           const std::vector<SpecialMatcher::Span>& spans) {
  std::vector<std::int32_t> order;
  for (std::size_t r = 0; r < specials.size(); ++r)
    if (!specials[r].text.empty()) order.push_back(static_cast<std::int32_t>(r));
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int32_t a, std::int32_t b) { return specials[a].text.size() > specials[b].text.size(); });
  std::vector<bool> taken(text.size(), false);
  Matches out;
  for (const std::int32_t r : order) {
    const std::string& s = specials[static_cast<std::size_t>(r)].text;
    for (const SpecialMatcher::Span& span : spans) {
      if (span.literal && specials[static_cast<std::size_t>(r)].control) continue;
      for (std::size_t at = span.begin; at + s.size() <= span.end;) {
        const bool fits = text.compare(at, s.size(), s) == 0 &&
                          std::none_of(taken.begin() + static_cast<std::ptrdiff_t>(at),
                                       taken.begin() + static_cast<std::ptrdiff_t>(at + s.size()), [](bool b) { return b; });
        if (!fits) {
          ++at;
          continue;
        }
        std::fill(taken.begin() + static_cast<std::ptrdiff_t>(at), taken.begin() + static_cast<std::ptrdiff_t>(at + s.size()),
                  true);
        out.push_back({at, at + s.size(), r});
        at += s.size();
      }
    }
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.begin < b.begin; });
  return out;
}

std::string describe(const Matches& m) {
  std::string s;
  for (const auto& x : m)
    s += "[" + std::to_string(x.begin) + "," + std::to_string(x.end) + ")#" + std::to_string(x.rank) + " ";
  return s;
}

void expect_same(const Matches& got, const Matches& want, const std::string& what) {
  EXPECT_EQ(describe(got), describe(want)) << what;
}

// Not "the longest at the earliest position": the longer special goes
// first wherever it is, and a shorter one overlapping it is not taken.
TEST(SpecialMatcherTest, TakesLongerSpecialsFirstWhereverTheyAre) {
  const std::vector<Special> specials = {{"xab", false}, {"bcdefg", false}};
  const SpecialMatcher m = make_matcher(specials);
  const std::string text = "xabcdefg xab";
  const std::vector<SpecialMatcher::Span> all = {{0, text.size(), false}};
  expect_same(m.find(text, all), Matches{{2, 8, 1}, {9, 12, 0}}, text);
  // Twins: the first of lower rank wins; inside a literal span, the first
  // that is not a control token; no match crosses a span's edge.
  const std::vector<Special> twins = {{"<a>", true}, {"<a>", false}, {"<a>", false}};
  const SpecialMatcher t = make_matcher(twins);
  const std::string tt = "<a><a><a>";
  const std::vector<SpecialMatcher::Span> spans = {{0, 3, false}, {3, 7, true}, {7, 9, false}};
  expect_same(t.find(tt, spans), Matches{{0, 3, 0}, {3, 6, 1}}, tt);
  // Nothing to find: no specials, no spans, an empty text.
  const SpecialMatcher none = make_matcher({});
  EXPECT_TRUE(none.find(text, all).empty());
  EXPECT_TRUE(m.find(text, {}).empty());
  EXPECT_TRUE(m.find("", std::vector<SpecialMatcher::Span>{{0, 0, false}}).empty());
}

// Random small sets of specials over a two- or three-letter alphabet (so
// that they overlap, nest, are prefixes and suffixes of one another and
// come as twins), in random rank order, against random texts cut into
// random literal and plain spans.
TEST(SpecialMatcherTest, AgreesWithASearchPerSpecialOnRandomInputs) {
  std::mt19937 rng(20240611);
  for (int trial = 0; trial < 20000; ++trial) {
    const int n_letters = 1 + static_cast<int>(rng() % 3);
    auto letter = [&] { return static_cast<char>('a' + rng() % static_cast<unsigned>(n_letters)); };
    std::vector<Special> specials;
    const int n_specials = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < n_specials; ++i) {
      std::string s;
      if (i > 0 && rng() % 3 == 0) {  // from another one: a suffix of it, or it and one more letter
        s = specials[rng() % static_cast<unsigned>(i)].text;
        if (rng() % 2 && s.size() > 1) s = s.substr(rng() % s.size());
        else s += letter();
      } else {
        for (int k = 1 + static_cast<int>(rng() % 6); k > 0; --k) s += letter();
      }
      specials.push_back({s, rng() % 2 == 0});
    }
    const SpecialMatcher m = make_matcher(specials);
    std::string text;
    for (int k = static_cast<int>(rng() % 40); k > 0; --k) text += letter();
    std::vector<SpecialMatcher::Span> spans;
    for (std::size_t at = 0; at < text.size();) {
      const std::size_t end = std::min(text.size(), at + 1 + rng() % 15);
      spans.push_back({at, end, rng() % 2 == 0});
      at = end;
    }
    std::string what = "text '" + text + "', specials";
    for (const Special& s : specials) what += " '" + s.text + (s.control ? "'(control)" : "'");
    expect_same(m.find(text, spans), search_per_special(text, specials, spans), what);
    if (HasFailure()) return;
  }
}

// The work done grows with the text, not with the text times the longest
// special (a walk of the byte tree from every position) nor times their
// number (a search per special). Each case here would cost billions of
// steps that way.
TEST(SpecialMatcherTest, WorkIsLinearInTheText) {
  auto steps_per_byte = [](const SpecialMatcher& m, const std::string& text, bool literal, Matches* found) {
    std::uint64_t n_steps = 0;
    *found = m.find(text, std::vector<SpecialMatcher::Span>{{0, text.size(), literal}}, &n_steps);
    return static_cast<double>(n_steps) / static_cast<double>(text.size());
  };
  Matches found;
  // One long special that a run of its first byte almost matches
  // everywhere: 20,000 bytes, 200,000 positions.
  const SpecialMatcher almost = make_matcher({{std::string(20000, 'a') + "b", true}});
  EXPECT_LT(steps_per_byte(almost, std::string(200000, 'a'), false, &found), 4.0);
  EXPECT_TRUE(found.empty());
  EXPECT_LT(steps_per_byte(almost, std::string(200000, 'a') + "b", false, &found), 4.0);
  expect_same(found, Matches{{180000, 200001, 0}}, "a^200000 b");
  EXPECT_LT(steps_per_byte(almost, std::string(200000, 'a') + "b", true, &found), 4.0);
  EXPECT_TRUE(found.empty());  // a control token, in a literal span

  // Specials that nest 300 deep at every position: "a" to 300 "a"s.
  std::vector<Special> runs;
  for (int n = 300; n >= 1; --n) runs.push_back({std::string(static_cast<std::size_t>(n), 'a'), false});
  const SpecialMatcher nested = make_matcher(runs);
  EXPECT_LT(steps_per_byte(nested, std::string(200150, 'a'), false, &found), 10.0);
  ASSERT_EQ(found.size(), 668u);  // 667 of 300 "a"s, then the 50 left
  EXPECT_EQ(found.back().end - found.back().begin, 50u);

  // Thousands of specials, and runs of spaces as user-defined tokens (as
  // Gemma has): a text of spaces.
  std::vector<Special> many;
  for (int n = 31; n >= 2; --n) many.push_back({std::string(static_cast<std::size_t>(n), ' '), false});
  for (int i = 0; i < 5000; ++i) many.push_back({"<unused" + std::to_string(i) + ">", true});
  const SpecialMatcher gemma = make_matcher(many);
  EXPECT_LT(steps_per_byte(gemma, std::string(310000, ' '), false, &found), 10.0);
  EXPECT_EQ(found.size(), 10000u);
  std::string unused;
  while (unused.size() < 300000) unused += "<unused1234<unused99999";
  EXPECT_LT(steps_per_byte(gemma, unused, false, &found), 4.0);
  EXPECT_EQ(found.size(), 0u);
}

}  // namespace
}  // namespace airlock::engine
