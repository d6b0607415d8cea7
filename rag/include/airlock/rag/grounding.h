// The grounding policy: when retrieval is good enough to let the chat model
// answer, how the model is told to answer only from numbered sources, and
// which sources an answer actually cites.
//
// The rule users rely on: if the best evidence is below the thresholds, the
// model is not asked at all and the caller gets the refusal text with
// handoff = true; if the model answers without citing any source, that
// answer is withheld the same way. Nothing is answered from general
// knowledge.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/rag/store.h"

namespace airlock::rag {

struct GroundingPolicy {
  // A retrieved chunk is evidence when its cosine similarity with the
  // question reaches min_similarity, or when it contains at least
  // min_term_coverage of the question's content words. Calibrated with
  // bench/rag_eval (docs/benchmarks.md).
  double min_similarity = 0.55;
  double min_term_coverage = 0.6;
  std::size_t max_source_bytes = 2000;  // of each source's text given to the model
  std::string refusal =
      "I don't know. The documents available to me do not answer this question, so I will not guess; "
      "please ask a person who can help.";
};

struct Evidence {
  bool sufficient = false;
  double best_similarity = 0;  // 0 when no vectors were used
  double best_term_coverage = 0;
  std::vector<std::size_t> usable;  // indexes of the hits that count as evidence, best first
};

Evidence assess_evidence(const std::vector<SearchHit>& hits, const GroundingPolicy& policy);

// The system message: rules, then "[1] (source: NAME) text" for each source.
std::string grounding_instructions(const std::vector<SearchHit>& sources, const GroundingPolicy& policy);

// Source numbers (1-based, <= n_sources) cited in `answer` as [n] or [n, m],
// each once, in order of first citation.
std::vector<int> cited_sources(std::string_view answer, std::size_t n_sources);

// For an answer that grows (streaming): whether `answer` cites a source,
// scanning only from *scan_from, which it advances past everything that can
// no longer begin a citation (a citation holds no '[' but its own). Start
// with *scan_from = 0 and pass the whole answer each time; the total work is
// linear in the answer's length however its pieces arrive.
bool cites_a_source(std::string_view answer, std::size_t n_sources, std::size_t* scan_from);

// At most `max_bytes` of `text` cut at a UTF-8 boundary, "..." when cut.
std::string snippet(std::string_view text, std::size_t max_bytes);

}  // namespace airlock::rag
