#include "reasoning.h"

#include <algorithm>

namespace airlock::daemon {
namespace {

constexpr std::string_view kOpen = kThinkOpen;
constexpr std::string_view kClose = kThinkClose;
constexpr std::string_view kSpace = " \t\n\r\f\v";

bool is_space(char c) { return kSpace.find(c) != std::string_view::npos; }

}  // namespace

ReasoningFormat reasoning_format_of(std::string_view chat_template) {
  return chat_template.find(kClose) != std::string_view::npos ? ReasoningFormat::kThinkTags : ReasoningFormat::kNone;
}

const char* reasoning_format_name(ReasoningFormat f) {
  return f == ReasoningFormat::kThinkTags ? "think_tags" : "none";
}

ReasoningStart reasoning_start(std::string_view prompt) {
  const std::size_t end = prompt.find_last_not_of(kSpace);
  if (end == std::string_view::npos) return ReasoningStart::kBefore;
  const std::string_view p = prompt.substr(0, end + 1);
  auto ends_with = [&](std::string_view tag) { return p.size() >= tag.size() && p.substr(p.size() - tag.size()) == tag; };
  if (ends_with(kOpen)) return ReasoningStart::kInside;
  if (ends_with(kClose)) return ReasoningStart::kAfter;
  return ReasoningStart::kBefore;
}

ReasoningSplitter::ReasoningSplitter(bool enabled, bool starts_open)
    : enabled_(enabled), state_(!enabled ? State::kContent : starts_open ? State::kReasoning : State::kStart) {}

ReasoningSplitter::Delta ReasoningSplitter::push(std::string_view piece, bool final) {
  Delta d;
  switch (state_) {
    case State::kContent:
      d.content = piece;
      break;
    case State::kAfter:
      after(piece, d);
      break;
    case State::kStart: {
      held_ += piece;
      const std::size_t i = held_.find_first_not_of(kSpace, held_ws_);
      held_ws_ = i == std::string::npos ? held_.size() : i;
      const std::string_view rest = std::string_view(held_).substr(held_ws_);
      if (rest.substr(0, kOpen.size()) == kOpen) {
        held_.erase(0, held_ws_ + kOpen.size());
        held_ws_ = 0;
        state_ = State::kReasoning;
        reason(d, final);
      } else if (!final && rest.size() < kOpen.size() && kOpen.substr(0, rest.size()) == rest) {
        // Whitespace, or the start of "<think>": not known yet.
      } else {
        // Not a thinking answer: all of it is content, unchanged.
        state_ = State::kContent;
        d.content = std::move(held_);
        held_.clear();
      }
      break;
    }
    case State::kReasoning:
      held_ += piece;
      reason(d, final);
      break;
  }
  return d;
}

// Inside the block: held_ is whitespace (its first held_ws_ bytes), maybe
// the start of "</think>", then what just came.
void ReasoningSplitter::reason(Delta& d, bool final) {
  // The tag starts with '<', so not among the known whitespace.
  const std::size_t tag = held_.find(kClose, held_ws_);
  if (tag != std::string::npos) {
    std::size_t end = tag;
    while (end > 0 && is_space(held_[end - 1])) --end;
    give_reasoning(end, d);
    const std::string rest = held_.substr(tag + kClose.size() - end);
    held_.clear();
    held_ws_ = 0;
    state_ = State::kAfter;
    after(rest, d);
    return;
  }
  std::size_t end = held_.size();
  if (!final) {
    // Hold what may be the start of "</think>", then the whitespace before it.
    for (std::size_t k = std::min(kClose.size() - 1, held_.size()); k > 0; --k)
      if (std::string_view(held_).substr(held_.size() - k) == kClose.substr(0, k)) {
        end -= k;
        break;
      }
  }
  std::size_t keep = end;
  while (keep > held_ws_ && is_space(held_[keep - 1])) --keep;
  if (keep == held_ws_) keep = 0;  // all whitespace up to `end`
  if (final) {
    give_reasoning(keep, d);
    held_.clear();
    held_ws_ = 0;
    return;
  }
  give_reasoning(keep, d);
  held_ws_ = end - keep;
}

// Gives out held_'s first n bytes as reasoning (dropping whitespace before
// the first reasoning) and removes them from held_.
void ReasoningSplitter::give_reasoning(std::size_t n, Delta& d) {
  std::size_t from = 0;
  if (!reasoning_begun_) {
    while (from < n && is_space(held_[from])) ++from;
    if (from < n) reasoning_begun_ = true;
  }
  d.reasoning.append(held_, from, n - from);
  held_.erase(0, n);
}

// After "</think>": whitespace is dropped, then all is content.
void ReasoningSplitter::after(std::string_view rest, Delta& d) {
  const std::size_t i = rest.find_first_not_of(kSpace);
  if (i == std::string_view::npos) return;
  state_ = State::kContent;
  d.content.append(rest.substr(i));
}

}  // namespace airlock::daemon
