#include "server.h"

#include <httplib.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <strings.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sodium.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <list>
#include <mutex>
#include <numeric>
#include <regex>

#include "airlock/common/log.h"
#include "airlock/common/version.h"
#include "airlock/rag/grounding.h"
#include "airlock/rag/ingest.h"
#include "connection.h"
#include "elastic_pool.h"
#include "gate.h"
#include "openai_api.h"
#include "request_stream.h"
#include "responses_api.h"
#include "schema_grammar.h"
#include "tool_calls.h"

namespace airlock::daemon {
namespace {

using engine::Clock;
using engine::FinishReason;
using engine::TokenEvent;
using engine::TokenStream;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// The longest route an audit row keeps (the API's own are far shorter).
constexpr std::size_t kMaxAuditRouteBytes = 512;

// How long a connection ended after a refusal still takes (and drops) what
// its client sends, so that a client still sending the refused body is not
// reset before it could read the answer. It holds the connection's thread.
constexpr std::chrono::milliseconds kLingerAfterRefusal{1000};
// The linger ends sooner once the client sent nothing for this long (or
// once its announced body was dropped): a client that went silent holds
// no thread.
constexpr std::chrono::milliseconds kLingerIdle{1000};

// The same for an upload refused because the ingests are full (429): its
// client is meant to try again, so it should read that answer rather than
// a reset, even while its body still comes (at 1 MiB/s, 1 ms a KiB, up to
// a minute in all). `n_bytes` is the announced length capped by the upload
// limit (payload_limit()).
std::chrono::milliseconds linger_for_upload(std::uint64_t n_bytes) {
  return kLingerAfterRefusal + std::chrono::milliseconds(std::min<std::uint64_t>(n_bytes >> 10, 59000));
}

// The connection of the request this thread is answering (its stream's
// socket: connection.h), or nullopt outside one.
std::optional<PeerSocket> this_connection() {
  const RequestStream* s = RequestStream::current();
  if (s == nullptr) return std::nullopt;
  return PeerSocket::of(s->socket());
}

// The body a request's head announces, in bytes; "unknown" (the most) for
// one without a Content-Length or with a Transfer-Encoding (chunked).
std::uint64_t announced_body_bytes(const httplib::Request& req) {
  if (req.has_header("Transfer-Encoding") || !req.has_header("Content-Length")) return UINT64_MAX;
  return req.get_header_value<std::uint64_t>("Content-Length");
}

// After a refusal that leaves bytes unread (a body, a target that is not
// a path): the answer is written, so end the connection. httplib 0.11
// keeps a connection open whatever "Connection: close" the answer says,
// and would read what follows the refused head as further requests: no
// answer may follow the refusal on this connection (no response desync
// behind a proxy), and the bytes must not be kept either. httplib holds a
// request line in memory until its newline, so a body without one (40 MB
// of JSON on one line) would be held whole, as the refusal meant to
// prevent. end_after_answer() sends the end of the connection after the
// answer, drops what the client still sends for a moment, and then makes
// httplib's next read see the end of the connection.
void end_answers(const httplib::Request& req, std::chrono::milliseconds linger) {
  if (std::optional<PeerSocket> p = this_connection()) p->end_after_answer(linger, kLingerIdle, announced_body_bytes(req));
}

// The route that takes documents (POST): its bodies may be larger than
// max_body_bytes (rag.max_document_bytes, base64 in JSON adds a third), and
// httplib's payload limit is set for them. The same pattern routes and
// exempts them from the 413 before reading.
constexpr const char* kDocumentsRoute = R"(/v1/rag/collections/([^/]+)/documents)";

// The most JSON values a document upload's body may hold (see the handler).
constexpr std::size_t kMaxDocumentJsonValues = 4096;

// The collection a document upload goes to (the route's NAME, as the
// handler gets it), or nullopt for any other request.
std::optional<std::string> upload_collection(const httplib::Request& req) {
  static const std::regex route(kDocumentsRoute);  // matched as httplib matches its routes
  std::smatch m;
  if (req.method != "POST" || !std::regex_match(req.path, m, route)) return std::nullopt;
  return m[1].str();
}

bool is_document_upload(const httplib::Request& req) { return upload_collection(req).has_value(); }

// httplib's payload limit: the larger of max_body_bytes and a document's
// size in base64 (with room for the JSON around it).
std::uint64_t payload_limit(const Config& c) {
  return std::max<std::uint64_t>(c.max_body_bytes, c.rag.max_document_bytes / 3 * 4 + (1u << 20));
}

// The slowest an upload's body may arrive on average, and the time it is
// given in all: its announced length (capped by the upload limit) at this
// rate, never less than rag.upload_timeout_ms. 64 KiB/s (512 kbit/s) is
// far below any network an appliance is reached over (a 32 MiB PDF as
// base64 JSON gets under 12 minutes); a client slower than that holds a
// place among the ingests for no good reason.
constexpr std::uint64_t kUploadFloorBytesPerSecond = 64u << 10;
std::chrono::milliseconds upload_read_time(const Config& c, std::uint64_t n_bytes) {
  const std::uint64_t ms = std::min(n_bytes, payload_limit(c)) * 1000 / kUploadFloorBytesPerSecond;
  return std::max(std::chrono::milliseconds(c.rag.upload_timeout_ms), std::chrono::milliseconds(ms));
}

// Why httplib would read a request's body without a bound, if it would:
// it applies its payload limit to a Content-Length only, so a chunked
// body (or any other transfer coding) and a POST without a length (read
// until the client closes) are held in memory whole first.
std::optional<std::string> unbounded_body(const httplib::Request& req) {
  if (req.has_header("Transfer-Encoding"))
    return "request bodies with a Transfer-Encoding (chunked) are not accepted: send the body with a Content-Length";
  if ((req.method == "POST" || req.method == "PUT" || req.method == "PATCH") && !req.has_header("Content-Length"))
    return "a " + req.method + " needs a Content-Length (0 for no body)";
  return std::nullopt;
}

// Why a request's body is refused for its Content-Encoding, if it is: httplib
// inflates gzip, deflate and br bodies into memory with no bound (its limit
// applies to the compressed Content-Length), so 8 MiB of gzip could become
// gigabytes before any check. Bodies are taken as sent (identity) only; the
// OpenAI SDKs do not compress requests.
std::optional<std::string> encoded_body(const httplib::Request& req) {
  if (req.get_header_value<std::uint64_t>("Content-Length") == 0) return std::nullopt;  // no body to inflate
  for (auto [it, end] = req.headers.equal_range("Content-Encoding"); it != end; ++it)  // (values come trimmed)
    if (strcasecmp(it->second.c_str(), "identity") != 0)
      return "request bodies with a Content-Encoding ('" + it->second +
             "') are not accepted: send the body uncompressed (identity)";
  return std::nullopt;
}

// True when the request's head announces a body httplib will not read:
// it reads one only for POST, PUT, PATCH and DELETE, and never when the
// request is answered before routing (401). Its bytes would then be read
// as the next request on the connection.
bool body_left_unread(const httplib::Request& req, bool answered_early) {
  const bool has_body = req.has_header("Transfer-Encoding") ||
                        (req.has_header("Content-Length") && req.get_header_value("Content-Length") != "0");
  if (!has_body) return false;
  const bool read = req.method == "POST" || req.method == "PUT" || req.method == "PATCH" || req.method == "DELETE";
  return answered_early || !read;
}

// Why a request's head frames its body in a way cpp-httplib reads one way
// and a proxy in front of airlockd may read another (RFC 9112, 6.3: such a
// request is refused and its connection closed), or nullopt: a
// Content-Length that is not digits alone, or several that differ (the
// library takes the first); a header line ending in a bare LF (the
// library skips the line, a proxy may honour it).
std::optional<std::string> ambiguous_framing(const httplib::Request& req) {
  if (const RequestStream* strm = RequestStream::current(); strm != nullptr && strm->bare_lf())
    return "header lines must end with CRLF";
  const auto [first, last] = req.headers.equal_range("Content-Length");
  for (auto it = first; it != last; ++it) {
    const std::string& v = it->second;
    if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos)
      return "Content-Length must be a decimal number of bytes";
    if (v != first->second) return "the request has several Content-Length headers that differ";
  }
  return std::nullopt;
}

std::string random_id(const char* prefix) {
  unsigned char b[12];
  randombytes_buf(b, sizeof b);
  static const char* hex = "0123456789abcdef";
  std::string out = prefix;
  for (unsigned char c : b) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

// `n` random letters and digits (Mistral's templates want tool call ids of
// exactly 9 of them).
std::string alnum_id(std::size_t n) {
  static const char* kChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string out;
  for (std::size_t i = 0; i < n; ++i) out += kChars[randombytes_uniform(62)];
  return out;
}

// Bytes that are not valid UTF-8 become U+FFFD, so the JSON stays valid.
std::string valid_utf8(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool ok = n > 0 && i + n <= s.size();
    for (std::size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    if (ok) {
      out.append(s, i, n);
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

// Length of the longest prefix of `s` that does not end inside a UTF-8
// character.
std::size_t utf8_safe_cut(const std::string& s, std::size_t n) {
  while (n > 0 && n < s.size() && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return n;
}

// Whether `v` holds text the tokenizer would read as a control token (a
// turn marker such as "<|im_end|>").
bool has_control_token_text(const engine::Tokenizer& tok, const std::string& v) {
  return tok.encode(v, false, true) != tok.encode(v, false, false);
}

// Keys can be megabytes long: a path names at most 64 bytes of one.
std::string short_key(std::string_view key) {
  std::string out(key.substr(0, 64));
  if (key.size() > 64) out += "...";
  return out;
}

// kInvalidArgument naming the first string under any of `roots` (each with
// the path that names it) that holds control-token text. For the strings a
// chat template prints that are not located as message content (tool
// call names and arguments, names, tool descriptions): refused outright.
// Every node is visited once; a node's path is rebuilt from its parents
// only when it is refused, so a long key under a large array costs nothing
// per element.
Status refuse_control_text(const engine::Tokenizer& tok, const std::vector<std::pair<std::string, const ojson*>>& roots) {
  struct Node {
    const ojson* v;
    std::size_t parent;    // index into `nodes`; npos for a root
    std::string_view key;  // for object members
    std::size_t index;     // for array elements, or the root's number
    bool is_index;
  };
  constexpr std::size_t kTop = std::string::npos;
  auto path_of = [&roots](const std::vector<Node>& nodes, std::size_t at) {
    std::vector<std::string> parts;  // innermost first
    for (; at != kTop; at = nodes[at].parent) {
      const Node& n = nodes[at];
      if (n.parent == kTop) parts.push_back(roots[n.index].first);
      else if (n.is_index) parts.push_back(std::string(1, '[').append(std::to_string(n.index)).append(1, ']'));
      else parts.push_back(std::string(1, '.').append(short_key(n.key)));  // not "." + string: GCC 12's false -Wrestrict
    }
    std::string out;
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) out += *it;
    return out;
  };
  for (std::size_t r = 0; r < roots.size(); ++r) {
    std::vector<Node> nodes = {{roots[r].second, kTop, std::string_view(), r, false}};
    std::vector<std::size_t> stack = {0};
    while (!stack.empty()) {
      const std::size_t at = stack.back();
      stack.pop_back();
      const ojson* v = nodes[at].v;
      if (v->is_string() && has_control_token_text(tok, v->get_ref<const std::string&>()))
        return invalid_argument(path_of(nodes, at) +
                                " holds control-token text (a turn marker such as this model's special tokens)");
      if (v->is_object())
        for (auto it = v->begin(); it != v->end(); ++it) {
          // Keys too: templates print objects (schemas, arguments) with tojson.
          if (has_control_token_text(tok, it.key()))
            return invalid_argument(path_of(nodes, at) + " has a key that holds control-token text (a turn marker such "
                                                         "as this model's special tokens)");
          nodes.push_back({&it.value(), at, it.key(), 0, false});
          stack.push_back(nodes.size() - 1);
        }
      if (v->is_array())
        for (std::size_t k = 0; k < v->size(); ++k) {
          nodes.push_back({&(*v)[k], at, std::string_view(), k, true});
          stack.push_back(nodes.size() - 1);
        }
    }
  }
  return Status::ok();
}

// One choice of a request: its sequence, decoder and stop-string state.
struct Choice {
  std::shared_ptr<TokenStream> stream;
  std::unique_ptr<engine::StreamDecoder> decoder;
  // The answer so far: a chat answer's think block (ReasoningSplitter) in
  // `reasoning`, the rest in `content`, stop strings applied; without a
  // split, all of it is content.
  ReasoningSplitter split;
  std::string reasoning, content;
  std::size_t reasoning_sent = 0;  // bytes of `reasoning` streamed
  int reasoning_tokens = 0;        // tokens generated inside the think block, its tags included
  std::string held;     // decoded but possibly the start of a stop string
  std::string finish;   // "", "stop", "length"
  Status error;
  bool done = false;
  int completion_tokens = 0;
  // The sampled tokens' log-probabilities (compact; JSON is built when sent:
  // as JSON they took ~8 KB a token with 20 alternatives). A stream releases
  // them once written; logprobs[0] is then token number logprobs_base.
  std::vector<engine::SampledToken> logprobs;
  std::size_t logprobs_base = 0;
  // /v1/completions, of every token with logprobs: where it begins in the
  // text (up to the stop string's cut), in bytes, counted as the text was
  // decoded (decoded_bytes before it). A token that ends in the middle of a
  // character points, as the next does, to where the character begins;
  // bytes that form no character count as U+FFFD, as the text shows them.
  std::vector<std::size_t> text_offsets;
  std::size_t decoded_bytes = 0;  // the decoder's output so far, before stop strings
  std::string echo;                       // /v1/completions with echo: its prompt, before its text
  // With tools: the bytes of `text` streamed as content so far, and the
  // calls parsed from the whole answer once it has ended.
  std::size_t tool_sent = 0;
  ToolStream tool_stream{ToolFormat::kNone};
  std::optional<ToolOutput> tool_output;
};

// A grounded answer's retrieval and what became of it.
struct Grounded {
  std::vector<rag::SearchHit> sources;  // numbered [1]..[n] for the model
  rag::Evidence evidence;
  std::vector<std::string> collections;  // as asked (empty: all readable)
  std::string question;
  bool answer_shape = false;  // respond as /v1/rag/query (rag.answer), not as chat
  bool generate = true;       // false: retrieval only
  std::string refusal;
  std::string reason;         // "", "no_evidence", "no_citation"
  std::vector<int> cited;     // source numbers the answer cites
  ojson original_messages;    // the conversation before the sources were put in front
  // Streaming: text is held back until the answer cites a source.
  bool released = false;
  std::string pending;
  std::size_t scan_from = 0;  // where in the answer the next citation scan starts
};

struct Generation {
  std::shared_ptr<LoadedModel> model;
  CompletionRequest request;
  std::optional<Grounded> grounded;
  std::vector<Choice> choices;
  std::string id;
  std::int64_t created = 0;
  int prompt_tokens = 0;
  std::size_t max_stop = 0;
  Clock::time_point start;
  std::optional<Clock::time_point> first_token, last_token;
  bool split_reasoning = false;  // a chat answer of a thinking model: reasoning apart from content

  // Appends decoded text to a choice: splits off its reasoning, then applies
  // stop strings to the rest (to the answer only: a thinking model writes
  // them while it reasons, "\n\n" or a ReAct "Observation:", and an agent
  // means them for its answer). Returns the content now safe to send (the
  // reasoning that came out waits in c.reasoning).
  std::string accept(Choice& c, const std::string& piece, bool final) {
    ReasoningSplitter::Delta d = c.split.push(piece, final);
    c.reasoning += d.reasoning;
    c.held += d.content;
    std::size_t cut = std::string::npos;
    for (const std::string& s : request.stop) cut = std::min(cut, c.held.find(s));
    std::string out;
    if (cut != std::string::npos) {
      out = c.held.substr(0, cut);
      c.held.clear();
      c.finish = "stop";
      c.done = true;
      c.stream->cancel();
    } else if (final || max_stop == 0) {
      out.swap(c.held);
    } else {
      // Keep back what could still grow into a stop string.
      const std::size_t keep = std::min(c.held.size(), max_stop - 1);
      const std::size_t n = utf8_safe_cut(c.held, c.held.size() - keep);
      out = c.held.substr(0, n);
      c.held.erase(0, n);
    }
    c.content += out;
    return out;
  }

  ojson token_logprob(const engine::SampledToken& t) const {
    auto entry = [&](std::int32_t token_id, float lp) {
      const std::string bytes = model->tokenizer->token_bytes(token_id, true);
      ojson e;
      e["token"] = valid_utf8(bytes);
      e["logprob"] = lp;
      ojson b = ojson::array();
      for (unsigned char ch : bytes) b.push_back(static_cast<int>(ch));
      e["bytes"] = b;
      return e;
    };
    ojson e = entry(t.token, t.logprob);
    e["top_logprobs"] = ojson::array();
    for (const auto& alt : t.top) e["top_logprobs"].push_back(entry(alt.token, alt.logprob));
    return e;
  }

  // A token as /v1/completions' logprobs name it (token_logprob's "token").
  std::string token_text(std::int32_t token_id) const {
    return valid_utf8(model->tokenizer->token_bytes(token_id, true));
  }

  // Consumes one scheduler event for choice `c`; returns the text to send.
  std::string on_event(Choice& c, TokenEvent& e) {
    if (c.done) return {};
    std::string out;
    if (e.token) {
      const Clock::time_point now = Clock::now();
      if (!first_token) first_token = now;
      last_token = now;
      ++c.completion_tokens;
      if (request.logprobs && request.endpoint == Endpoint::kCompletions) c.text_offsets.push_back(c.decoded_bytes);
      const bool reasoning = c.split.in_reasoning();
      const std::string piece = c.decoder->push(e.token->token);
      c.decoded_bytes += piece.size();
      out += accept(c, piece, false);
      const bool in_reasoning = reasoning || c.split.in_reasoning();
      if (in_reasoning) ++c.reasoning_tokens;
      // A response's log-probabilities are its output text's: the reasoning
      // item has none (chat's are every token's, as before).
      if (request.logprobs && !(request.responses && in_reasoning)) c.logprobs.push_back(*e.token);
      if (c.done) return out;
    }
    switch (e.finish) {
      case FinishReason::kNone: break;
      case FinishReason::kStop:
      case FinishReason::kLength:
        out += accept(c, c.decoder->finish(), true);
        if (!c.done) c.finish = e.finish == FinishReason::kStop ? "stop" : "length";
        c.done = true;
        break;
      case FinishReason::kCancelled:
        c.error = unavailable("the request was cancelled (the server is shutting down)");
        c.done = true;
        break;
      case FinishReason::kError:
        c.error = e.error;
        c.done = true;
        break;
    }
    return out;
  }

  bool all_done() const {
    return std::all_of(choices.begin(), choices.end(), [](const Choice& c) { return c.done; });
  }
  bool calls_tools() const { return !request.tools.empty(); }
  // A tool-calling choice that has ended: its calls, parsed once. An answer
  // with calls that ended by itself finishes with "tool_calls", except when
  // tool_choice named the function: OpenAI answers "stop" there, streamed or
  // not (vLLM does the same). One cut by max_tokens stays "length".
  const ToolOutput& tool_output(Choice& c) const {
    if (!c.tool_output) {
      c.tool_output = parse_tool_calls(model->tool_format, c.content, request.tool_specs,
                                       request.parallel_tool_calls ? static_cast<std::size_t>(-1) : 1);
      if (!c.tool_output->calls.empty() && c.finish == "stop" && request.forced_tool.empty())
        c.finish = "tool_calls";
      for (ToolCall& call : c.tool_output->calls)
        call.id = model->tool_format == ToolFormat::kMistral ? alnum_id(9) : random_id("call_");
    }
    return *c.tool_output;
  }
  // A choice's calls as OpenAI's tool_calls (streamed: numbered by index).
  static ojson tool_calls_json(const ToolOutput& t, bool streamed) {
    ojson calls = ojson::array();
    for (std::size_t k = 0; k < t.calls.size(); ++k) {
      ojson call;
      if (streamed) call["index"] = k;
      call["id"] = t.calls[k].id;
      call["type"] = "function";
      call["function"] = {{"name", t.calls[k].name}, {"arguments", t.calls[k].arguments}};
      calls.push_back(std::move(call));
    }
    return calls;
  }
  // The next piece of a tool-calling choice's content to stream: what has
  // become safe to send since the last call, or at its end what is left.
  std::string tool_content_delta(Choice& c) const {
    std::size_t upto = c.tool_stream.safe_prefix(c.content);
    const std::string* source = &c.content;
    if (c.done && c.error.is_ok()) {
      source = &tool_output(c).content;
      upto = source->size();
    }
    if (upto <= c.tool_sent) return {};
    std::string out = source->substr(c.tool_sent, upto - c.tool_sent);
    c.tool_sent = upto;
    return out;
  }
  int completion_tokens() const {
    int n = 0;
    for (const Choice& c : choices) n += c.completion_tokens;
    return n;
  }
  int reasoning_tokens() const {
    int n = 0;
    for (const Choice& c : choices) n += c.reasoning_tokens;
    return n;
  }
  // Of the prompt tokens, those whose KV the prefix cache held: each
  // prompt's first choice (its other choices share that prompt).
  int cached_tokens() const {
    int n = 0;
    for (std::size_t k = 0; k < choices.size(); k += static_cast<std::size_t>(request.n))
      if (choices[k].stream) n += choices[k].stream->cached_tokens();
    return n;
  }
  ojson usage() const {
    ojson u;
    u["prompt_tokens"] = prompt_tokens;
    u["completion_tokens"] = completion_tokens();
    u["total_tokens"] = prompt_tokens + completion_tokens();
    if (request.endpoint == Endpoint::kChat) u["prompt_tokens_details"] = {{"cached_tokens", cached_tokens()}};
    if (split_reasoning) u["completion_tokens_details"] = {{"reasoning_tokens", reasoning_tokens()}};
    return u;
  }
  void cancel_all() {
    for (Choice& c : choices)
      if (c.stream) c.stream->cancel();
  }
};

// httplib 0.11 listens only on sockets it creates. Its listening socket is
// a protected member, so a subclass can hand it one that systemd created
// (socket activation); listen_after_bind() then serves on it. Such a socket
// must outlive this process (systemd passes the same one to the next
// start): httplib's stop() would shut it down, which stops it listening for
// systemd too, so release() only makes the accept loop end (at its next
// idle tick) and the caller closes its descriptor.
template <class Base>
class AdoptingServer : public Base {
 public:
  using Base::Base;
  void adopt(socket_t fd) { this->svr_sock_ = fd; }
  void release() { this->svr_sock_ = INVALID_SOCKET; }
};

// httplib's connection threads (one per connection, from accept to close):
// an ElasticPool that keeps `kept` threads and starts more, up to `max`,
// whenever a connection would otherwise wait behind busy ones (connections
// that send nothing hold their thread up to the keep-alive timeout).
// Threads beyond the kept ones end after 10 s without a connection.
//
// Each is named airlock-http. While it waits for a request's tokens and
// writes them it runs under SCHED_BATCH (waiting_for_tokens()), which
// differs from the default policy in one thing: a thread of it that wakes
// does not preempt the thread running on its core. A stream's thread wakes
// for every token; on a machine whose cores all run compute threads it
// used to preempt one in the middle of a step, and the step's other
// threads waited at its next barrier for it (stories260K at 16 clients:
// HTTP at 0.61-0.68 of the engine's rate, 0.87-0.91 under SCHED_BATCH;
// docs/benchmarks.md). It then runs when a core is free or at the end of
// the running thread's slice (a few milliseconds at most), gathering the
// tokens that came meanwhile; on an idle core it runs at once. Its share of
// the CPU is that of any other thread.
//
// Reading, checking and admitting a request keep the default policy (the
// logger puts it back once an answer is written), so that a request that
// arrives while every core computes is taken at once, not a slice later,
// and requests arriving together start together. Under the default policy
// it asks for a short time slice, kReadingSlice (sched_setattr's
// sched_runtime, Linux 6.12 and later; earlier kernels ignore it): since
// the EEVDF scheduler (6.6), a woken thread no longer preempts one that has
// not used up its slice (a few milliseconds) unless its own is shorter. On
// the 2-core VM, four requests sent together took the HTTP path 18.6
// scheduler steps more than the engine on average without it, 7.9 with it:
// they began further apart (docs/benchmarks.md).
constexpr std::chrono::microseconds kReadingSlice{100};  // the shortest the kernel grants

// sched_setattr(2)'s argument as far as SCHED_ATTR_SIZE_VER0 (glibc 2.36 has
// no wrapper, and <linux/sched/types.h> clashes with <sched.h>).
struct SchedAttr {
  std::uint32_t size;
  std::uint32_t sched_policy;
  std::uint64_t sched_flags;
  std::int32_t sched_nice;
  std::uint32_t sched_priority;
  std::uint64_t sched_runtime;
  std::uint64_t sched_deadline;
  std::uint64_t sched_period;
};
static_assert(sizeof(SchedAttr) == 48, "SCHED_ATTR_SIZE_VER0");

constexpr std::uint64_t kSchedFlagResetOnFork = 0x01;  // SCHED_FLAG_RESET_ON_FORK (<linux/sched.h>)

// The calling thread under the default policy with kReadingSlice, its nice
// value (and reset-on-fork flag) kept; false (errno set) where the kernel
// or a seccomp filter refuses sched_getattr or sched_setattr.
bool read_with_short_slice() {
  SchedAttr a{};
  if (syscall(SYS_sched_getattr, 0, &a, sizeof a, 0) != 0) return false;
  a.size = sizeof a;
  a.sched_policy = SCHED_OTHER;
  a.sched_flags &= kSchedFlagResetOnFork;
  a.sched_priority = 0;
  a.sched_runtime = static_cast<std::uint64_t>(std::chrono::nanoseconds(kReadingSlice).count());
  a.sched_deadline = a.sched_period = 0;
  return syscall(SYS_sched_setattr, 0, &a, 0) == 0;
}

// The calling connection thread's policy: SCHED_BATCH while `waiting`, the
// default with kReadingSlice otherwise (the default alone where the slice
// is refused). sched_setscheduler keeps a slice that sched_setattr set, so
// on Linux 6.12 and later a streaming thread has kReadingSlice as well: as
// SCHED_BATCH it still does not preempt when it wakes, and then comes
// first once the running thread's slice ends (that is what was measured).
// A refusal is logged once and not retried at every request; one of
// SCHED_BATCH leaves the default.
void waiting_for_tokens(bool waiting) {
  thread_local std::optional<bool> batch;  // unknown at the thread's start
  if (batch == waiting) return;
  if (!waiting) {
    batch = false;
    if (read_with_short_slice()) return;
    static std::once_flag noted;
    std::call_once(noted, [err = errno] {
      airlock::log().warn("connection threads read requests with the default time slice (sched_setattr refused: {}): "
                          "requests that arrive together may start a few milliseconds apart",
                          std::strerror(err));
    });
  }
  const sched_param none{};
  if (sched_setscheduler(0, waiting ? SCHED_BATCH : SCHED_OTHER, &none) != 0) {
    if (waiting) {
      static std::once_flag warned;
      std::call_once(warned, [err = errno] {
        airlock::log().warn("connection threads keep the default scheduling policy (SCHED_BATCH refused: {}): "
                            "streams' writes may preempt the compute threads",
                            std::strerror(err));
      });
    }
    return;
  }
  batch = waiting;
}

// (Its policy first: a thread found by its name has it.)
void start_connection_thread() {
  waiting_for_tokens(false);
  pthread_setname_np(pthread_self(), "airlock-http");
}

// The connections that hold a connection thread without a request to work
// on, oldest first: those waiting for a request (their first, or the next
// on a kept-alive connection), and those whose request head (or TLS
// handshake) is still arriving. When every thread is busy and the cap is
// reached, a new connection would wait behind them: a waiting connection
// is ended instead, or one whose head has taken more than kSlowHead (a
// handshake, kSlowHandshake), so that connections which send nothing, or
// send a head a byte at a time (no key needed for either), cannot keep
// others out. A client whose idle connection was ended opens another, as
// HTTP clients do when a server closes a kept-alive connection.
//
// Thread-safety: every member may be called from any thread.
class IdleConnections {
 public:
  // A head still arriving after this long may be ended at the cap: a
  // client sends a head in one piece, in well under a second, on any
  // network an appliance is reached over. A TLS handshake takes the client
  // two round trips and may check a client certificate: three seconds.
  static constexpr std::chrono::milliseconds kSlowHead{1000};
  static constexpr std::chrono::milliseconds kSlowHandshake{3000};

  struct Entry {
    int fd;
    bool ended = false;
    std::optional<std::chrono::steady_clock::time_point> slow_at;  // set: reading a head, slow from then
  };
  using Ticket = std::list<Entry>::iterator;

  // `fd` waits for a request until leave(); it stays open until then.
  Ticket enter(int fd) {
    std::lock_guard<std::mutex> lock(mu_);
    return waiting_.insert(waiting_.end(), Entry{fd, false, std::nullopt});
  }
  // Its request (or TLS handshake) has begun to arrive, and is slow once
  // it takes longer than `slow_after`.
  void reading_head(Ticket t, std::chrono::milliseconds slow_after) {
    std::lock_guard<std::mutex> lock(mu_);
    t->slow_at = std::chrono::steady_clock::now() + slow_after;
  }
  // end_oldest() has ended it.
  bool ended(Ticket t) {
    std::lock_guard<std::mutex> lock(mu_);
    return t->ended;
  }
  // True when end_oldest() ended it meanwhile: it must not be served.
  bool leave(Ticket t) {
    std::lock_guard<std::mutex> lock(mu_);
    const bool ended = t->ended;
    waiting_.erase(t);
    return ended;
  }
  // For `n` connections that wait for a thread: shuts down as many more,
  // oldest first, as those already shut down and not yet gone leave
  // without one. Waiting connections (whose wait ends at once, and then
  // the connection) and slow heads (whose read fails); a waiting
  // connection whose request has just begun to arrive is left alone, and
  // so is a head not yet slow. Returns how many it ended.
  std::size_t end_oldest(std::size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Entry& e : waiting_)
      if (e.ended && n > 0) --n;  // its thread is about to be free
    const auto now = std::chrono::steady_clock::now();
    std::size_t ended = 0;
    for (Entry& e : waiting_) {
      if (ended == n) break;
      if (e.ended) continue;
      if (e.slow_at) {
        if (*e.slow_at > now) continue;
      } else {
        pollfd p{e.fd, POLLIN, 0};
        if (::poll(&p, 1, 0) != 0) continue;
      }
      e.ended = true;
      ::shutdown(e.fd, SHUT_RDWR);
      ++ended;
      Counter* c = e.slow_at ? slow_heads_ : idle_;
      if (c != nullptr) c->inc();
    }
    return ended;
  }
  // Count the connections end_oldest() ended, idle and slow heads (set
  // before any is).
  void count_in(Counter* idle, Counter* slow_heads) {
    idle_ = idle;
    slow_heads_ = slow_heads;
  }

 private:
  std::mutex mu_;
  std::list<Entry> waiting_;
  Counter* idle_ = nullptr;
  Counter* slow_heads_ = nullptr;
};

class ConnectionThreads : public httplib::TaskQueue {
 public:
  ConnectionThreads(int kept, int max, IdleConnections& idle)
      : idle_(idle),
        pool_(static_cast<std::size_t>(kept), static_cast<std::size_t>(max), std::chrono::seconds(10),
              start_connection_thread),
        again_([this] {
          pthread_setname_np(pthread_self(), "airlock-httpcap");  // (15 characters at most)
          try_again();
        }) {}
  ~ConnectionThreads() override { shutdown(); }
  ConnectionThreads(const ConnectionThreads&) = delete;
  ConnectionThreads& operator=(const ConnectionThreads&) = delete;

  // (Connections that would wait for a thread take idle ones'.)
  void enqueue(std::function<void()> fn) override {
    const std::size_t waiting = pool_.enqueue(std::move(fn));
    if (waiting == 0) return;
    idle_.end_oldest(waiting);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++queued_;
    }
    cv_.notify_one();
  }
  void shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_one();
    if (again_.joinable()) again_.join();
    pool_.shutdown();
  }

 private:
  // While connections wait for a thread, every 200 ms: heads that have
  // become slow since the last connection came give way too, without
  // waiting for another connection to come.
  void try_again() {
    std::unique_lock<std::mutex> lock(mu_);
    std::uint64_t seen = 0;
    while (true) {
      cv_.wait(lock, [&] { return stopping_ || queued_ != seen; });
      while (!stopping_) {
        seen = queued_;
        if (cv_.wait_for(lock, std::chrono::milliseconds(200), [&] { return stopping_; })) break;
        lock.unlock();
        const std::size_t waiting = pool_.n_waiting();
        if (waiting > 0) idle_.end_oldest(waiting);
        lock.lock();
        if (waiting == 0 && queued_ == seen) break;  // (a connection queued meanwhile: go on)
      }
      if (stopping_) return;
    }
  }

  IdleConnections& idle_;
  ElasticPool pool_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::uint64_t queued_ = 0;  // connections that had to wait, ever
  bool stopping_ = false;
  std::thread again_;  // last: started once the rest is
};

struct ListenerControl {
  IdleConnections idle;
  std::function<void(socket_t)> adopt;
  std::function<void()> release;
  // Counts and audits a request whose head a RequestStream refused before
  // the library answered anything (a request line too long or too slow).
  std::function<void(int status)> head_refused;
};

// The JSON error body of a refused head (431 or 408), and its message.
std::string head_refusal_message(const RequestStream& s) {
  switch (s.refusal()) {
    case RequestStream::Refusal::kHeadTooLarge:
      return "the request line and headers are larger than " + std::to_string(s.limits().max_head_bytes) + " bytes";
    case RequestStream::Refusal::kTooManyHeaderLines:
      return "the request has more than " + std::to_string(s.limits().max_header_lines) + " header lines";
    default:
      return "the request line and headers did not arrive within " +
             std::to_string(s.limits().head_timeout.count() / 1000) + " s";
  }
}
int head_refusal_status(const RequestStream& s) { return s.refusal() == RequestStream::Refusal::kHeadTimedOut ? 408 : 431; }

// HTTP through RequestStream (request_stream.h), which bounds each
// request's head, over plain TCP (Base httplib::Server) or TLS
// (httplib::SSLServer, whose context holds the operator's certificate and
// client CA). The keep-alive loop is the library's own
// (detail::process_server_socket in httplib 0.11.4: wait up to the
// keep-alive timeout for a request, answer it, again up to the keep-alive
// count; then shut the socket down and close it), with a RequestStream for
// each request where the library makes its own. process_and_close_socket
// is virtual in the library; that it is private there does not stop an
// override. A TLS handshake must end within the head's time limit (the
// library's waited up to the read timeout for each of the client's
// messages, however many it trickled).
template <class Base>
class BoundedServer final : public AdoptingServer<Base> {
 public:
  template <class... Args>
  explicit BoundedServer(ListenerControl& control, Args&&... args)
      : AdoptingServer<Base>(std::forward<Args>(args)...), control_(control) {}

 private:
  static constexpr bool kTls = std::is_same_v<Base, httplib::SSLServer>;

  bool process_and_close_socket(socket_t sock) override {
    RequestStream::Limits limits;
    limits.read_timeout = {static_cast<time_t>(this->read_timeout_sec_),
                           static_cast<suseconds_t>(this->read_timeout_usec_)};
    limits.write_timeout = {static_cast<time_t>(this->write_timeout_sec_),
                            static_cast<suseconds_t>(this->write_timeout_usec_)};
    SSL* ssl = nullptr;
    if constexpr (kTls) {
      // (the handshake begins once the client has sent something; the
      // library waited the read timeout for it, as here; a slow handshake
      // may give way as a slow head does)
      {
        Waiting w(control_.idle, sock);  // (gone before the socket is closed)
        if (w.wait_for_request(nullptr, std::chrono::seconds(this->read_timeout_sec_), IdleConnections::kSlowHandshake))
          ssl = RequestStream::accept_tls(sock, this->ssl_context(), limits);
        if (ssl != nullptr && !w.leave()) {  // ended as it finished
          RequestStream::end_tls(ssl, false);
          ssl = nullptr;
        }
      }
      if (ssl == nullptr) {
        ::shutdown(sock, SHUT_RDWR);
        ::close(sock);
        return false;
      }
    }
    bool ret = false;
    // (the library's stream lost what it had read past a request: a client
    // that sent its next request without waiting got no answer to it)
    RequestStream::ReadAhead ahead;
    bool linger = false;  // bytes may be left unread: a lingering close
    for (std::size_t count = this->keep_alive_max_count_; this->svr_sock_ != INVALID_SOCKET && count > 0; --count) {
      Waiting w(control_.idle, sock);
      ahead.skip_blank();  // (a CRLF after the last body: still waiting, not a head)
      if (!w.wait_for_request(ssl, std::chrono::seconds(this->keep_alive_timeout_sec_), IdleConnections::kSlowHead,
                              !ahead.empty()))
        break;
      RequestStream strm(sock, limits, ssl, &ahead);
      strm.hold(&w);
      bool connection_closed = false;
      // The body the head announces: what the library must have read of
      // it for the connection to go on (set once the head was parsed).
      std::optional<std::uint64_t> announced;
      ret = this->process_request(strm, count == 1, connection_closed, [&](httplib::Request& req) {
        if constexpr (kTls) req.ssl = ssl;
        announced = req.has_header("Transfer-Encoding") ? UINT64_MAX
                    : req.has_header("Content-Length")  ? req.get_header_value<std::uint64_t>("Content-Length")
                                                        : 0;
      });
      if (strm.refusal() != RequestStream::Refusal::kNone) {
        // The library answered a refused header line itself (400, which
        // the error handler turned into 431 or 408); a refused request line
        // it leaves unanswered. The rest of the head is unread.
        if (!strm.answered()) answer_refusal(strm);
        ret = false;
        linger = true;
        break;
      }
      if (strm.connection_ended() || strm.cut_off()) {
        ret = false;
        break;
      }
      // A request the library answered without reading all of it: its
      // own 400 (a request line or header it could not parse), 414 or 416
      // before the body, or a body it stopped reading. What is left would
      // be read as the next request (request smuggling behind a proxy):
      // the connection ends after the answer. (airlockd's own refusals
      // end theirs in the logger.)
      // Lingering only where bytes may be left: not after a client that
      // closed, or fell silent, before its head.
      auto bytes_left = [&] {
        return !ahead.empty() || RequestStream::wait_readable(sock, ssl, std::chrono::milliseconds(0));
      };
      if (!announced || strm.body_bytes_read() != *announced) {
        ret = false;
        linger = announced.has_value() || (strm.bytes_taken() > 0 && bytes_left());
        break;
      }
      if (!ret) break;  // (nothing more can be written)
      if (connection_closed || count == 1) {
        // Pipelined requests left unanswered (the answer said "close", or
        // this was the connection's last).
        linger = bytes_left();
        break;
      }
    }
    // (close_notify when the connection ended well, as the library's)
    RequestStream::end_tls(ssl, ret);
    // Closed with unread bytes, the socket would reset the connection,
    // and the client could lose the answer before reading it: a lingering
    // close (end_after_answer) lets it read the answer first.
    if (linger) PeerSocket::of(sock).end_after_answer(std::chrono::seconds(1), std::chrono::seconds(1), 1u << 20);
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
    return ret;
  }

  // A connection among the idle ones (IdleConnections), which a new
  // connection may end: while it waits for a request, and then while the
  // request's head arrives (until leave(), at the latest until destroyed).
  class Waiting final : public RequestStream::Place {
   public:
    Waiting(IdleConnections& idle, socket_t sock) : idle_(idle), sock_(sock), ticket_(idle.enter(sock)) {}
    ~Waiting() override { (void)leave(); }
    Waiting(const Waiting&) = delete;
    Waiting& operator=(const Waiting&) = delete;

    // Waits up to `timeout` for a request (its first bytes), unless they
    // have come already (`pending`, read with the one before); once they
    // have, the connection counts as reading a head, slow after
    // `slow_after`.
    bool wait_for_request(SSL* ssl, std::chrono::seconds timeout, std::chrono::milliseconds slow_after,
                          bool pending = false) {
      if (!pending && !RequestStream::wait_readable(sock_, ssl, timeout)) return false;
      idle_.reading_head(ticket_, slow_after);
      return true;
    }
    // False when the connection was ended while it waited (it must not be
    // served); the same on every call.
    bool leave() override {
      if (!std::exchange(left_, true)) ended_ = idle_.leave(ticket_);
      return !ended_;
    }
    bool ended() override { return left_ ? ended_ : idle_.ended(ticket_); }

   private:
    IdleConnections& idle_;
    socket_t sock_;
    IdleConnections::Ticket ticket_;
    bool left_ = false;
    bool ended_ = false;
  };

  void answer_refusal(RequestStream& strm) const {
    const int status = head_refusal_status(strm);
    ApiError e;
    e.http_status = status;
    e.type = "invalid_request_error";
    e.message = head_refusal_message(strm);
    const std::string body = error_body(e);
    strm.write_now("HTTP/1.1 " + std::to_string(status) +
                   (status == 431 ? " Request Header Fields Too Large" : " Request Timeout") +
                   "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                   "\r\nConnection: close\r\n\r\n" + body);
    if (control_.head_refused) control_.head_refused(status);
  }

  ListenerControl& control_;
};

// Plain HTTP, or TLS with the operator's certificate (and, with client_ca,
// only clients presenting a certificate that CA signed). `control` gets the
// server's adopt() and release().
std::unique_ptr<httplib::Server> make_http(const Config& c, ListenerControl& control) {
  auto wire = [&control](auto* p) {
    control.adopt = [p](socket_t fd) { p->adopt(fd); };
    control.release = [p] { p->release(); };
  };
  if (c.tls_cert.empty()) {
    auto s = std::make_unique<BoundedServer<httplib::Server>>(control);
    wire(s.get());
    return s;
  }
  auto s = std::make_unique<BoundedServer<httplib::SSLServer>>(
      control, c.tls_cert.c_str(), c.tls_key.c_str(), c.tls_client_ca.empty() ? nullptr : c.tls_client_ca.c_str());
  wire(s.get());
  return s;
}

ApiError api_error(int status, const std::string& type, const std::string& message, const std::string& code = "") {
  ApiError e;
  e.http_status = status;
  e.type = type;
  e.message = message;
  e.code = code;
  return e;
}

ApiError body_over_limit(std::uint64_t max_body_bytes) {
  return api_error(413, "invalid_request_error",
                   "the request body is larger than " + std::to_string(max_body_bytes) + " bytes");
}

ApiError status_error(const Status& st) {
  ApiError e;
  e.http_status = http_status(st.code());
  e.type = e.http_status >= 500 ? "server_error" : "invalid_request_error";
  e.message = st.message();
  e.code = std::string(status_code_name(st.code()));
  return e;
}

// A document upload's refusal by rag::ingest_document (or by the same
// check of the key's rights made before the body is read): the status's
// answer, its message after the document's name when that is known.
ApiError ingest_refusal(const Status& st, const std::string& source) {
  ApiError e = status_error(st);
  if (!source.empty()) e.message = source + ": " + st.message();
  if (st.code() == StatusCode::kInvalidArgument) e.code = "invalid_document";
  if (st.code() == StatusCode::kResourceExhausted) {
    e.http_status = 413;
    e.code = "document_too_large";
  }
  return e;
}

// 404 for a request naming a model this server does not serve.
ApiError unknown_model(const std::string& name) {
  return api_error(404, "invalid_request_error", "the model '" + name + "' does not exist (GET /v1/models)",
                   "model_not_found");
}

ojson source_json(const rag::SearchHit& h, int n) {
  ojson j;
  j["n"] = n;
  j["collection"] = h.collection;
  j["document"] = h.source;
  j["title"] = h.title;
  j["document_id"] = h.document_id;
  j["chunk_id"] = h.chunk_id;
  j["position"] = h.position;
  j["begin"] = h.begin;
  j["end"] = h.end;
  j["score"] = h.score;
  j["similarity"] = h.similarity ? ojson(*h.similarity) : ojson();
  j["bm25"] = h.bm25 ? ojson(*h.bm25) : ojson();
  j["term_coverage"] = h.term_coverage;
  if (h.rerank_score) j["rerank_score"] = *h.rerank_score;
  j["snippet"] = rag::snippet(h.text, 300);
  return j;
}

// The grounding outcome as the `airlock` object of a chat answer.
ojson grounding_json(const Grounded& gr) {
  ojson a;
  const bool handoff = !gr.reason.empty();
  // Retrieval only (generate: false): grounded means the evidence suffices.
  a["grounded"] = !handoff;
  a["handoff"] = handoff;
  a["handoff_reason"] = handoff ? ojson(gr.reason) : ojson();
  a["collections"] = gr.collections;
  a["citations"] = ojson::array();
  for (int n : gr.cited) a["citations"].push_back(source_json(gr.sources[static_cast<std::size_t>(n - 1)], n));
  a["sources"] = ojson::array();
  for (std::size_t i = 0; i < gr.sources.size(); ++i) {
    ojson sj = source_json(gr.sources[i], static_cast<int>(i + 1));
    sj["cited"] = std::find(gr.cited.begin(), gr.cited.end(), static_cast<int>(i + 1)) != gr.cited.end();
    sj["evidence"] = std::find(gr.evidence.usable.begin(), gr.evidence.usable.end(), i) != gr.evidence.usable.end();
    a["sources"].push_back(std::move(sj));
  }
  a["evidence"] = {{"best_similarity", gr.evidence.best_similarity},
                   {"best_term_coverage", gr.evidence.best_term_coverage}};
  return a;
}

std::string sse(const ojson& j) { return "data: " + j.dump(-1, ' ', false, ojson::error_handler_t::replace) + "\n\n"; }

}  // namespace

struct Server::Impl {
  Config config;
  Authenticator authenticate;
  AuditSink audit;
  Metrics& metrics;
  ListenerControl listener;  // set by make_http
  bool adopted = false;      // serving on a socket systemd passed
  std::unique_ptr<httplib::Server> http_owner;
  httplib::Server& http;
  mutable std::mutex model_mu;
  std::shared_ptr<LoadedModel> model;
  std::string withdrawn_why;  // set by withdraw_model(), cleared by set_model()
  // Models replaced by a reload that requests still hold: shutdown drains
  // them too.
  std::vector<std::weak_ptr<LoadedModel>> retired;
  std::atomic<bool> draining{false};
  std::atomic<bool> run_returned{false};
  std::atomic<int> in_flight{0};  // streams, until their resources are released
  // Requests between the pre-routing handler and the logger (their answer
  // written, streams included): shutdown() lets them finish before it ends
  // the connections.
  std::atomic<int> handling{0};
  // Set once shutdown() shuts down the connections' reading side: a socket
  // shut down so polls as a client that hung up, which it is not.
  std::atomic<bool> ending_connections{false};
  // Document uploads being read or ingested (rag.max_concurrent_ingests).
  Gate ingests;
  Gate bodies;  // bytes of request bodies being read or parsed (body_memory_bytes)
  int listen_fd = -1;
  int listen_port = 0;  // of listen_fd: the accepted connections have it as their local port

  Histogram& ttft;
  Histogram& itl;
  Histogram& e2e;
  Histogram& queue;
  Counter& prompt_tokens;
  Counter& generated_tokens;

  Impl(Config c, Authenticator a, AuditSink s, Metrics& m)
      : config(std::move(c)), authenticate(std::move(a)), audit(std::move(s)), metrics(m),
        http_owner(make_http(config, listener)), http(*http_owner), ingests(config.rag.max_concurrent_ingests),
        bodies(static_cast<std::int64_t>(body_memory_bytes(config))),
        ttft(m.histogram("airlock_time_to_first_token_seconds", "Time from request arrival to its first token",
                         latency_buckets())),
        itl(m.histogram("airlock_inter_token_latency_seconds", "Mean time between tokens of a request",
                        latency_buckets())),
        e2e(m.histogram("airlock_e2e_request_latency_seconds", "Time from request arrival to its last byte",
                        latency_buckets())),
        queue(m.histogram("airlock_request_queue_time_seconds", "Time a request waited for admission",
                          latency_buckets())),
        prompt_tokens(m.counter("airlock_prompt_tokens_total", "Prompt tokens of admitted requests")),
        generated_tokens(m.counter("airlock_generation_tokens_total", "Tokens generated")) {
    listener.idle.count_in(
        &m.counter("airlock_http_idle_connections_ended_total",
                   "Connections waiting for a request ended to free a thread for a new one"),
        &m.counter("airlock_http_slow_heads_ended_total",
                   "Connections whose request head (over 1 s) or TLS handshake (over 3 s) was slow, ended to free a thread"));
    listener.head_refused = [this](int status) {
      httplib::Request unparsed;  // no request line was read whole: no path, key or model
      count(unparsed, status);
      write_audit("", unparsed, nullptr, status);
    };
  }

  std::shared_ptr<LoadedModel> current() const {
    std::lock_guard<std::mutex> lock(model_mu);
    return model;
  }

  // The replaced model joins `retired` while requests still hold it.
  void replace_model(std::shared_ptr<LoadedModel> next, std::string why) {
    std::lock_guard<std::mutex> lock(model_mu);
    std::erase_if(retired, [](const std::weak_ptr<LoadedModel>& w) { return w.expired(); });
    if (model) retired.push_back(model);
    model = std::move(next);
    withdrawn_why = std::move(why);
  }

  // "no model is loaded", and why when the model was withdrawn.
  std::string no_model() const {
    std::lock_guard<std::mutex> lock(model_mu);
    return withdrawn_why.empty() ? "no model is loaded" : "no model is loaded: " + withdrawn_why;
  }

  void count(const httplib::Request& req, int status) {
    if (admitted_key().request == &req) admitted_key().counted = true;
    count_route(req.path, status);
  }
  // Counts a request to `path` (its route's label: the known routes, the
  // collections' under one name, "other" for the rest).
  void count_route(const std::string& path, int status) {
    std::string route = path;
    if (route.rfind("/v1/rag/collections", 0) == 0) route = "/v1/rag/collections";
    if (route != "/health" && route != "/ready" && route != "/metrics" && route != "/v1/models" &&
        route != "/v1/chat/completions" && route != "/v1/completions" && route != "/v1/responses" &&
        route != "/v1/embeddings" && route != "/v1/rerank" && route != "/tokenize" && route != "/detokenize" &&
        route != "/v1/rag/query" && route != "/v1/rag/collections")
      route = "other";
    metrics
        .counter("airlock_requests_total", "HTTP requests by route and status",
                 "route=\"" + route + "\",status=\"" + std::to_string(status) + "\"")
        .inc();
  }

  // Whether a body read on a route other than document uploads may be
  // parsed: 413 over max_body_bytes; 503 when its JSON tree (up to ~30
  // times its size) does not fit in max_body_memory_mib beside the other
  // requests' (its slot, which holds the body's size while it is read,
  // grows to kBodyMemoryPerByte times it).
  std::optional<ApiError> body_room(const httplib::Request& req) {
    if (req.body.size() > config.max_body_bytes) return body_over_limit(config.max_body_bytes);
    if (req.body.empty() || admitted_key().request != &req) return std::nullopt;
    if (admitted_key().body.try_grow_to(static_cast<std::int64_t>(req.body.size() * kBodyMemoryPerByte)))
      return std::nullopt;
    return busy_with_bodies();
  }
  bool body_refused(const httplib::Request& req, httplib::Response& res) {
    const std::optional<ApiError> e = body_room(req);
    if (e) send_error(res, *e);
    return e.has_value();
  }
  ApiError busy_with_bodies() {
    metrics.counter("airlock_body_memory_refusals_total", "Requests refused because max_body_memory_mib was taken").inc();
    return api_error(503, "server_error",
                     "request bodies being read and parsed take max_body_memory_mib (" +
                         std::to_string(body_memory_bytes(config) >> 20) + " MiB) already; retry shortly",
                     "server_busy");
  }

  // The model a retrieval-model request (/v1/embeddings, /v1/rerank) runs
  // on; null, with the error sent (413, 503), when it may not run.
  std::shared_ptr<LoadedModel> model_for(const httplib::Request& req, httplib::Response& res) {
    if (body_refused(req, res)) return nullptr;
    if (draining) {
      send_error(res, api_error(503, "server_error", "the server is shutting down"));
      return nullptr;
    }
    std::shared_ptr<LoadedModel> m = current();
    if (!m) send_error(res, api_error(503, "server_error", no_model()));
    return m;
  }

  void send_error(httplib::Response& res, const ApiError& e) {
    res.status = e.http_status;
    if (e.http_status == 429 || e.http_status == 503) res.set_header("Retry-After", "1");
    res.set_content(error_body(e), "application/json");
  }

  // The key a request was admitted with. It is checked once, before
  // routing, and that answer stands for the whole request (handlers, the
  // audit row, the RAG principal): checked again later, a key revoked (and
  // reloaded) while the client trickled its body in was served and then
  // audited as no key at all. httplib runs a request's pre-routing,
  // handler, content provider and logger on one thread, one request at a
  // time, so the answer is kept per thread, tagged with the request.
  struct AdmittedKey {
    const httplib::Request* request = nullptr;
    std::optional<std::string> name;
    bool audited = false;       // the request has its audit row
    bool counted = false;       // the request is counted in airlock_requests_total
    bool unread_bytes = false;  // refused with bytes left unread: the logger ends the connection
    bool handling = false;      // counted in Impl::handling until the logger runs
    std::chrono::milliseconds linger = kLingerAfterRefusal;  // with unread_bytes: end_answers()' wait
    // A document upload's place among the ingests, taken before its body
    // is read and given back when the upload handler returns, or when this
    // is reset: by the logger once the answer is written (the 408 or 400
    // of a body that did not arrive, read_upload()), or, if the logger
    // never ran, by the next request on this thread or the thread's end.
    Gate::Slot ingest = {};
    // Any other request's share of max_body_memory_mib: its body's size,
    // taken before the body is read, then room for its JSON tree, taken
    // before it is parsed (body_room()); given back the same way. (A
    // request may keep copies of parts of its JSON until it is answered.)
    Gate::Slot body = {};
  };
  static AdmittedKey& admitted_key() {
    thread_local AdmittedKey k;
    return k;
  }
  std::optional<std::string> check_key(const httplib::Request& req) {
    // "Bearer" in any case (an authentication scheme's name is
    // case-insensitive, RFC 9110 11.1), then one or more spaces, then the key.
    const std::string h = req.get_header_value("Authorization");
    constexpr std::string_view kBearer = "bearer";
    if (h.size() <= kBearer.size() || h[kBearer.size()] != ' ') return std::nullopt;
    for (std::size_t i = 0; i < kBearer.size(); ++i)
      if (static_cast<char>(std::tolower(static_cast<unsigned char>(h[i]))) != kBearer[i]) return std::nullopt;
    const std::size_t key_at = h.find_first_not_of(' ', kBearer.size());
    if (key_at == std::string::npos) return std::nullopt;
    return authenticate(std::string_view(h).substr(key_at));
  }
  std::optional<std::string> key_of(const httplib::Request& req) {
    const AdmittedKey& k = admitted_key();
    if (k.request == &req) return k.name;
    return check_key(req);  // a request that never reached routing (a malformed one)
  }

  // Renders and tokenizes the prompt of a request.
  using ContentRange = std::pair<std::size_t, std::size_t>;

  // Where the chat template put each message's content in `text` (byte
  // ranges), for the messages whose content holds control-token text; none
  // when no message does (the common case: one extra tokenisation per
  // message). Found by rendering again with each content replaced by a
  // unique marker, and trusted only if putting the contents back in gives
  // `text` exactly: as written, or trimmed (templates that `| trim`).
  // kInvalidArgument when the template changes such a content otherwise.
  Result<std::vector<ContentRange>> content_ranges(const LoadedModel& m, const engine::ChatTemplateInputs& in,
                                                   const std::string& text) const {
    const engine::Tokenizer& tok = *m.tokenizer;
    auto content_of = [](const ojson& msg) -> const std::string* {
      return msg.is_object() && msg.contains("content") && msg["content"].is_string()
                 ? &msg["content"].get_ref<const std::string&>()
                 : nullptr;
    };
    auto has_control_text = [&](const std::string& v) { return has_control_token_text(tok, v); };
    // A message's other strings (name, tool call names and arguments,
    // reasoning) are printed by some templates too, and are not located:
    // control-token text in them is refused outright.
    for (std::size_t i = 0; i < in.messages.size(); ++i) {
      if (!in.messages[i].is_object()) continue;
      std::vector<std::pair<std::string, const ojson*>> roots;
      for (auto it = in.messages[i].begin(); it != in.messages[i].end(); ++it) {
        if (has_control_token_text(tok, it.key()))
          return invalid_argument("messages[" + std::to_string(i) + "] has a key that holds control-token text");
        if (it.key() != "content" && it.key() != "role") roots.emplace_back("messages[" + std::to_string(i) + "]." + short_key(it.key()), &it.value());
      }
      AIRLOCK_RETURN_IF_ERROR(refuse_control_text(tok, roots));
    }
    bool any = false;
    for (const ojson& msg : in.messages)
      if (const std::string* c = content_of(msg)) any = any || has_control_text(*c);
    if (!any) return std::vector<ContentRange>();
    auto trim = [](const std::string& v) {
      const char* ws = " \t\n\r\f\v";
      const std::size_t b = v.find_first_not_of(ws);
      return b == std::string::npos ? std::string() : v.substr(b, v.find_last_not_of(ws) - b + 1);
    };
    const std::string marker = "AirlockContent" + random_id("") + "N";  // digits, then 'E'
    for (bool trimmed : {false, true}) {
      engine::ChatTemplateInputs marked = in;
      std::vector<std::string> contents;
      for (ojson& msg : marked.messages) {
        const std::string* c = content_of(msg);
        if (c == nullptr) continue;
        contents.push_back(trimmed ? trim(*c) : *c);
        msg["content"] = marker + std::to_string(contents.size() - 1) + "E";
      }
      Result<std::string> rendered = m.chat_template->render(marked);
      if (!rendered.is_ok()) continue;
      std::string rebuilt;
      std::vector<ContentRange> ranges;
      std::size_t pos = 0;
      bool ok = true;
      for (std::size_t at; ok && (at = rendered->find(marker, pos)) != std::string::npos;) {
        rebuilt.append(*rendered, pos, at - pos);
        const std::size_t digits = at + marker.size(), end = rendered->find('E', digits);
        std::size_t index = contents.size();
        if (end != std::string::npos && end > digits && end - digits < 8 &&
            rendered->find_first_not_of("0123456789", digits) == end)
          index = std::stoul(rendered->substr(digits, end - digits));
        if (index >= contents.size()) {
          ok = false;
          break;
        }
        if (!contents[index].empty()) ranges.emplace_back(rebuilt.size(), rebuilt.size() + contents[index].size());
        rebuilt += contents[index];
        pos = end + 1;
      }
      if (!ok) continue;
      rebuilt.append(*rendered, pos);
      if (rebuilt == text) return ranges;
    }
    return invalid_argument(
        "a message holds control-token text (a turn marker such as this model's special tokens), and this model's "
        "chat template changes message text in a way that does not let it be kept as plain text");
  }

  // What a chat request gives the template besides its messages, checked:
  // tools need a tool-call format this server reads, and the template
  // prints the tools' names, descriptions and schemas, and may print the
  // extra variables, so control-token text in them is refused.
  static std::optional<ApiError> check_template_inputs(const LoadedModel& m, const CompletionRequest& r) {
    if (!r.tools.empty() && m.tool_format == ToolFormat::kNone) {
      ApiError e = api_error(400, "invalid_request_error",
                             "tools: this model's chat template does not teach it a tool-call format this server reads "
                             "(Hermes <tool_call> blocks, as Qwen2.5/Qwen3; Llama 3.1+ JSON calls), so its answer could "
                             "not be returned as tool_calls");
      e.param = "tools";
      return e;
    }
    for (auto [name, value] : {std::pair<const char*, const ojson*>{"tools", &r.tools},
                               std::pair<const char*, const ojson*>{"chat_template_kwargs", &r.chat_template_kwargs}})
      if (Status st = refuse_control_text(*m.tokenizer, {{name, value}}); !st.is_ok()) {
        // The Responses API's tools are flat: tools[0].description.
        ApiError e = api_error(400, "invalid_request_error", r.responses ? flat_tool_paths(st.message()) : st.message());
        e.param = name;
        return e;
      }
    return std::nullopt;
  }

  // A completions prompt is the caller's whole text: its control-token
  // text is parsed (a hand-written ChatML or Llama 3 prompt works, as in
  // vLLM and llama.cpp). Chat messages are not parsed (prompt_tokens_of).
  static std::vector<std::int32_t> completion_prompt_tokens(const LoadedModel& m, const std::string& prompt) {
    return m.tokenizer->encode(prompt, /*add_special=*/true, /*parse_special=*/true);
  }

  // The first prompt of /v1/completions, or the chat's rendered messages.
  // `start`: set to where the chat prompt leaves the answer (reasoning.h).
  // add_generation_prompt false: without the assistant's opened turn
  // (POST /tokenize only).
  Result<std::vector<std::int32_t>> prompt_tokens_of(const LoadedModel& m, const CompletionRequest& r,
                                                     ReasoningStart* start = nullptr, bool add_generation_prompt = true) {
    const engine::Tokenizer& tok = *m.tokenizer;
    if (r.endpoint == Endpoint::kCompletions) return completion_prompt_tokens(m, r.prompts.at(0));
    engine::ChatTemplateInputs in;
    in.messages = r.messages;
    in.add_generation_prompt = add_generation_prompt;
    in.bos_token = tok.bos() >= 0 ? tok.token_bytes(tok.bos(), true) : "";
    in.eos_token = tok.eos() >= 0 ? tok.token_bytes(tok.eos(), true) : "";
    in.extra = r.chat_template_kwargs;  // names checked by parse_request, text by the caller
    if (!r.tools.empty()) in.extra["tools"] = r.tools;  // checked for control-token text by the caller
    AIRLOCK_ASSIGN_OR_RETURN(std::string text, m.chat_template->render(in));
    if (start) *start = reasoning_start(text);
    // The template's markup is parsed for control tokens; the messages'
    // content is not, so a message (or a RAG document in the system message)
    // cannot forge a turn by writing "<|im_end|>...<|im_start|>system".
    AIRLOCK_ASSIGN_OR_RETURN(std::vector<ContentRange> literal, content_ranges(m, in, text));
    // The template writes BOS itself where the model wants it; a template
    // that does not (the ChatML fallback) still gets the tokenizer's BOS.
    std::vector<std::int32_t> ids = tok.encode(text, /*add_special=*/false, literal);
    if (tok.add_bos() && tok.bos() >= 0 && (ids.empty() || ids[0] != tok.bos())) ids.insert(ids.begin(), tok.bos());
    return ids;
  }

  ojson chunk_base(const Generation& g) const {
    ojson c;
    c["id"] = g.id;
    c["object"] = g.request.endpoint == Endpoint::kChat ? "chat.completion.chunk" : "text_completion";
    c["created"] = g.created;
    c["model"] = g.model->id;
    c["system_fingerprint"] = "airlock-" + std::string(kVersion);
    return c;
  }
  // A chat or completions chunk with these choices (usage null in each
  // where the final chunk will carry it).
  ojson chunk_of(const Generation& g, ojson choices) const {
    ojson c = chunk_base(g);
    c["choices"] = std::move(choices);
    if (g.request.include_usage) c["usage"] = nullptr;
    return c;
  }

  // Log-probabilities of some of choice c's tokens, `first` being the
  // number of the first among all its tokens. Chat: logprobs.content
  // entries. /v1/completions: the legacy object of tokens, their
  // log-probabilities, the alternatives as {token: logprob}, and each
  // token's offset in the text (in bytes; the same as characters for ASCII).
  static ojson logprobs_json(const Generation& g, const Choice& c, std::span<const engine::SampledToken> entries,
                             std::size_t first) {
    if (g.request.endpoint == Endpoint::kChat) {
      ojson content = ojson::array();
      for (const engine::SampledToken& t : entries) content.push_back(g.token_logprob(t));
      return ojson({{"content", std::move(content)}});
    }
    ojson tokens = ojson::array(), token_logprobs = ojson::array(), top = ojson::array(), offsets = ojson::array();
    for (std::size_t k = 0; k < entries.size(); ++k) {
      const engine::SampledToken& t = entries[k];
      tokens.push_back(g.token_text(t.token));
      token_logprobs.push_back(t.logprob);
      ojson alts = ojson::object();
      for (const auto& alt : t.top) alts[g.token_text(alt.token)] = alt.logprob;
      // The sampled token is always among them (OpenAI: up to logprobs + 1
      // entries), even when it was not one of the most likely.
      if (!t.top.empty() && !alts.contains(g.token_text(t.token))) alts[g.token_text(t.token)] = t.logprob;
      top.push_back(std::move(alts));
      offsets.push_back(c.text_offsets[first + k]);
    }
    return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
  }

  // The JSON text of logprobs_json(g, c, entries, first), written a token at
  // a time: a whole answer's log-probabilities as one tree took ~8 times
  // their text (n = 16, 2000 tokens, 20 alternatives: a 42 MB answer, 360
  // MB at its peak).
  static std::string logprobs_text(const Generation& g, const Choice& c, std::span<const engine::SampledToken> entries,
                                   std::size_t first) {
    auto text = [](const ojson& v) { return v.dump(-1, ' ', false, ojson::error_handler_t::replace); };
    if (g.request.endpoint == Endpoint::kChat) {
      std::string out = "{\"content\":[";
      for (std::size_t k = 0; k < entries.size(); ++k) out += (k ? "," : "") + text(g.token_logprob(entries[k]));
      return out + "]}";
    }
    std::string parts[4];
    for (std::size_t k = 0; k < entries.size(); ++k) {
      const ojson one = logprobs_json(g, c, entries.subspan(k, 1), first + k);
      const char* sep = k ? "," : "";
      parts[0] += sep + text(one["tokens"][0]);
      parts[1] += sep + text(one["token_logprobs"][0]);
      parts[2] += sep + text(one["top_logprobs"][0]);
      parts[3] += sep + text(one["text_offset"][0]);
    }
    return "{\"tokens\":[" + parts[0] + "],\"token_logprobs\":[" + parts[1] + "],\"top_logprobs\":[" + parts[2] +
           "],\"text_offset\":[" + parts[3] + "]}";
  }

  // whole_response(g) as text, its log-probabilities written by
  // logprobs_text(): the tree holds a marker per choice, replaced in order.
  // What is looked for is the key with its marker value, "logprobs":"@@..@@":
  // a string the model wrote may equal a marker, but inside a dumped string
  // the quotes of '":"' would be escaped.
  std::string whole_response_text(const Generation& g) const {
    ojson r = whole_response(g, /*logprobs=*/false);
    const bool lp = g.request.logprobs;
    if (lp)
      for (std::size_t i = 0; i < g.choices.size(); ++i) r["choices"][i]["logprobs"] = "@@airlock-logprobs-" + std::to_string(i) + "@@";
    const std::string skeleton = r.dump(-1, ' ', false, ojson::error_handler_t::replace);
    if (!lp) return skeleton;
    std::string out;
    std::size_t from = 0;
    for (std::size_t i = 0; i < g.choices.size(); ++i) {
      const std::string key = "\"logprobs\":", marker = key + "\"@@airlock-logprobs-" + std::to_string(i) + "@@\"";
      const std::size_t at = skeleton.find(marker, from);
      if (at == std::string::npos) break;  // (cannot happen: each choice has its marker)
      out.append(skeleton, from, at - from);
      const Choice& c = g.choices[i];
      out += key + logprobs_text(g, c, c.logprobs, c.logprobs_base);
      from = at + marker.size();
    }
    out.append(skeleton, from, std::string::npos);
    return out;
  }

  // `logprobs`: the new tokens' entries, the first being token number
  // `lp_first` of the choice.
  ojson choice_delta(const Generation& g, std::size_t index, const std::string& text,
                     std::span<const engine::SampledToken> logprobs, std::size_t lp_first, const std::string& finish,
                     bool role, const std::string& reasoning = {}) const {
    ojson ch;
    ch["index"] = index;
    if (g.request.endpoint == Endpoint::kChat) {
      ojson delta = ojson::object();
      if (role) delta["role"] = "assistant";
      add_reasoning(delta, reasoning);
      // With tools an answer may be calls alone, whose content is null (as
      // OpenAI starts such a stream); the SDKs append text to a null.
      if (role && text.empty() && g.calls_tools()) delta["content"] = nullptr;
      else if (role || !text.empty()) delta["content"] = text;
      ch["delta"] = delta;
    } else {
      ch["text"] = text;
    }
    ch["logprobs"] = logprobs.empty() ? ojson() : logprobs_json(g, g.choices[index], logprobs, lp_first);
    ch["finish_reason"] = finish.empty() ? ojson() : ojson(finish);
    return ch;
  }

  // Reasoning under the names clients read: DeepSeek's and llama.cpp's
  // reasoning_content, vLLM's and OpenRouter's reasoning.
  static void add_reasoning(ojson& message, const std::string& reasoning) {
    if (reasoning.empty()) return;
    message["reasoning_content"] = reasoning;
    message["reasoning"] = reasoning;
  }

  // With `logprobs` false the choices' "logprobs" are null whatever the
  // request asked (whole_response_text writes them).
  ojson whole_response(const Generation& g, bool logprobs = true) const {
    ojson r;
    r["id"] = g.id;
    r["object"] = g.request.endpoint == Endpoint::kChat ? "chat.completion" : "text_completion";
    r["created"] = g.created;
    r["model"] = g.model->id;
    r["system_fingerprint"] = "airlock-" + std::string(kVersion);
    r["choices"] = ojson::array();
    for (std::size_t i = 0; i < g.choices.size(); ++i) {
      const Choice& c = g.choices[i];
      ojson ch;
      ch["index"] = i;
      if (g.request.endpoint == Endpoint::kChat && c.tool_output && !c.tool_output->calls.empty()) {
        const ToolOutput& t = *c.tool_output;
        ch["message"] = {{"role", "assistant"},
                         {"content", t.content.empty() ? ojson() : ojson(t.content)},
                         {"tool_calls", Generation::tool_calls_json(t, false)}};
        add_reasoning(ch["message"], c.reasoning);
      } else if (g.request.endpoint == Endpoint::kChat) {
        ch["message"] = {{"role", "assistant"}, {"content", c.tool_output ? c.tool_output->content : c.content}};
        add_reasoning(ch["message"], c.reasoning);
      } else {
        ch["text"] = c.echo + c.content;
      }
      ch["logprobs"] = logprobs && g.request.logprobs ? logprobs_json(g, c, c.logprobs, c.logprobs_base) : ojson();
      ch["finish_reason"] = c.finish;
      r["choices"].push_back(std::move(ch));
    }
    r["usage"] = g.usage();
    if (g.grounded) r["airlock"] = grounding_json(*g.grounded);
    return r;
  }

  // The /v1/rag/query answer object.
  ojson rag_answer(const Generation& g) const {
    const Grounded& gr = *g.grounded;
    ojson r;
    r["id"] = g.id;
    r["object"] = "rag.answer";
    r["created"] = g.created;
    r["model"] = g.model->id;
    r["question"] = gr.question;
    r["answer"] = gr.generate && !g.choices.empty() ? ojson(g.choices[0].content) : ojson();
    if (gr.generate && !g.choices.empty() && !g.choices[0].reasoning.empty()) r["reasoning"] = g.choices[0].reasoning;
    ojson a = grounding_json(gr);
    for (auto& [k, v] : a.items()) r[k] = v;
    r["usage"] = g.usage();
    return r;
  }

  rag::Principal principal_of(const std::string& key) const {
    rag::Principal p;
    p.key = key;
    p.admin = std::find(config.rag.admins.begin(), config.rag.admins.end(), key) != config.rag.admins.end();
    for (const auto& [group, members] : config.rag.groups)
      if (std::find(members.begin(), members.end(), key) != members.end()) p.groups.push_back(group);
    return p;
  }

  // Asked before a document upload's body is read, so that a key that may
  // not write to `collection` holds no place among the ingests while its
  // body trickles in: the refusal rag::ingest_document's own check would
  // give after the body (403 for a reader, 404 when the key may not read
  // the collection or there is none; the same envelope, also counted as
  // "refused"), or nullopt when the key may write, or when there is no
  // store to ask (the handler then answers 503 once the body is read).
  std::optional<ApiError> upload_refusal(const httplib::Request& req, const std::string& collection) {
    std::shared_ptr<LoadedModel> m = current();
    if (draining || !m || !m->rag_store) return std::nullopt;
    const Status st = m->rag_store->check_writable(collection, principal_of(key_of(req).value_or("")));
    if (st.is_ok()) return std::nullopt;
    metrics.counter("airlock_rag_documents_total", "Documents submitted for ingestion by result", "status=\"refused\"")
        .inc();
    // The handler's answer starts with the document's name: a raw upload
    // gives it in the query; JSON in the body, which is not read.
    const bool json = req.get_header_value("Content-Type").rfind("application/json", 0) == 0;
    return ingest_refusal(st, json ? std::string() : req.get_param_value("source"));
  }

  // Reads a document upload's body (its route takes the body through a
  // ContentReader, so that this can bound it in time). True with *body
  // whole; false with the answer sent and the connection to end after it
  // (the rest of the body is not read): 408 upload_too_slow when the body
  // did not arrive within upload_read_time() (httplib bounds each read, by
  // its 5 s read timeout, but not the body: a client sending a byte every
  // few seconds would hold its place among the ingests for as long as it
  // liked; it is cut off at the first bytes after the deadline, or by the
  // read timeout), 413 when it grows past the payload limit (a compressed
  // body, decompressed), 400 when the client closed, sent nothing for 5 s
  // or sent a body that did not decode.
  bool read_upload(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader,
                   std::string* body) {
    const std::uint64_t n_bytes = req.get_header_value<std::uint64_t>("Content-Length");
    const std::chrono::milliseconds allowed = upload_read_time(config, n_bytes);
    const auto deadline = std::chrono::steady_clock::now() + allowed;
    const std::uint64_t limit = payload_limit(config);
    bool late = false, too_large = false;
    const bool whole = reader([&](const char* data, std::size_t n) {
      late = std::chrono::steady_clock::now() > deadline;
      too_large = body->size() + n > limit;
      if (late || too_large) return false;
      body->append(data, n);
      return true;
    });
    if (whole) return true;
    body->clear();
    late = late || std::chrono::steady_clock::now() > deadline;
    res.set_header("Connection", "close");
    admitted_key().unread_bytes = true;  // the logger ends the connection once the answer is written
    if (too_large) {
      send_error(res, body_over_limit(limit));
    } else if (late) {
      airlock::log().warn("document upload by key '{}' from {}: its body ({} bytes announced) did not arrive within "
                          "{} ms; cut off with 408",
                          key_of(req).value_or(""), req.remote_addr, n_bytes, allowed.count());
      send_error(res, api_error(408, "invalid_request_error",
                                "the document's body did not arrive within " + std::to_string(allowed.count()) +
                                    " ms (" + std::to_string(n_bytes) +
                                    " bytes announced: an upload is given its length at 64 KiB/s, and at least "
                                    "rag.upload_timeout_ms)",
                                "upload_too_slow"));
    } else {
      send_error(res, api_error(400, "invalid_request_error",
                                "the document's body could not be read in whole (" + std::to_string(n_bytes) +
                                    " bytes announced): the connection closed, or nothing arrived for 5 s"));
    }
    return false;
  }

  rag::GroundingPolicy policy() const {
    rag::GroundingPolicy p;
    p.min_similarity = config.rag.min_similarity;
    p.min_term_coverage = config.rag.min_term_coverage;
    if (!config.rag.refusal.empty()) p.refusal = config.rag.refusal;
    return p;
  }

  // Pair tokens one /v1/rerank request may score, after each pair is cut
  // to the model's input length (docs/daemon.md).
  static constexpr std::size_t kMaxRerankTokens = 65536;

  // The reranker's relevance (0..1: the logistic of its logit) of each
  // document for `query`, and the pair tokens it read (*tokens). 400 over
  // `max_tokens` (param `param`), 500 when the model fails.
  std::optional<ApiError> rerank(const LoadedModel& m, const std::string& query, const std::vector<std::string>& docs,
                                 std::size_t max_tokens, const char* param, std::vector<double>* relevance,
                                 std::size_t* tokens) const {
    std::vector<engine::RerankPair> pairs;
    pairs.reserve(docs.size());
    *tokens = 0;
    const std::vector<std::int32_t> q = m.reranker->query_ids(query);  // once, however many documents
    for (const std::string& d : docs) {
      pairs.push_back(m.reranker->pair(q, d));
      *tokens += pairs.back().ids.size();
      if (*tokens > max_tokens) break;  // refused below; the rest need not be read
    }
    if (*tokens > max_tokens) {
      ApiError e = api_error(400, "invalid_request_error",
                             "the pairs hold " + std::to_string(*tokens) + " tokens (each cut to the model's " +
                                 std::to_string(m.reranker->context_length()) + "); at most " +
                                 std::to_string(max_tokens) + " per request");
      e.param = param;
      return e;
    }
    Result<std::vector<float>> logits = m.reranker->score(pairs);
    if (!logits.is_ok()) return api_error(500, "server_error", "the reranker failed: " + logits.status().message());
    relevance->clear();
    for (float l : *logits) {
      if (!std::isfinite(l)) return api_error(500, "server_error", "the reranker gave a score that is not a number");
      relevance->push_back(1.0 / (1.0 + std::exp(-static_cast<double>(l))));
    }
    return std::nullopt;
  }

  // Retrieves the sources of a grounded request and, when the evidence is
  // good enough, puts them in front of the conversation as numbered sources.
  std::optional<ApiError> ground(const LoadedModel& m, const std::string& key, Generation& g, bool answer_shape,
                                 bool generate) {
    if (!m.rag_store) return api_error(503, "server_error", "RAG is off: " + m.rag_off_reason, "rag_unavailable");
    CompletionRequest& r = g.request;
    const GroundingSpec& spec = *r.grounding;
    Grounded gr;
    gr.answer_shape = answer_shape;
    gr.generate = generate;
    gr.collections = spec.collections;
    gr.refusal = policy().refusal;
    for (auto it = r.messages.rbegin(); it != r.messages.rend(); ++it)
      if ((*it)["role"] == "user") {
        gr.question = (*it)["content"].get<std::string>();
        break;
      }
    rag::SearchRequest sr;
    sr.collections = spec.collections;
    sr.query = gr.question;
    sr.mode = spec.mode == "bm25" ? rag::SearchMode::kBm25 : spec.mode == "vector" ? rag::SearchMode::kVector
                                                                                   : rag::SearchMode::kHybrid;
    sr.top_k = spec.top_k > 0 ? spec.top_k : config.rag.top_k;
    sr.candidates = config.rag.candidates;
    if (spec.rerank == true && (!m.reranker || config.rag.rerank_candidates == 0)) {
      ApiError e = api_error(400, "invalid_request_error",
                             !m.reranker ? "rerank is true, but the bundle '" + m.id + "' has no reranker"
                                         : std::string("rerank is true, but rag.rerank_candidates is 0 on this server"));
      e.param = "rerank";
      return e;
    }
    // The reranker reorders the fused candidates; the best top_k of its
    // order are the sources.
    const bool reranking = m.reranker && spec.rerank != false && config.rag.rerank_candidates > 0;
    const int top_k = sr.top_k;
    if (reranking) sr.top_k = std::max(top_k, config.rag.rerank_candidates);
    if (sr.mode != rag::SearchMode::kBm25) {
      sr.query_vector = m.rag_embedder->embed_query(gr.question);
      if (sr.query_vector.size() != static_cast<std::size_t>(m.rag_embedder->dim()))  // the encoder failed: not the question's fault
        return api_error(500, "server_error", "the embedding model failed on the question");
    }
    Result<std::vector<rag::SearchHit>> hits = m.rag_store->search(sr, principal_of(key));
    if (!hits.is_ok()) return status_error(hits.status());
    gr.sources = std::move(*hits);
    if (reranking && !gr.sources.empty()) {
      std::vector<std::string> texts;
      for (const rag::SearchHit& h : gr.sources) texts.push_back(h.text);
      std::vector<double> relevance;
      std::size_t tokens = 0;
      // The operator's rag.rerank_candidates bounds this work, not the request.
      if (auto e = rerank(m, gr.question, texts, SIZE_MAX, "question", &relevance, &tokens)) return e;
      for (std::size_t i = 0; i < gr.sources.size(); ++i) gr.sources[i].rerank_score = relevance[i];
      // Ties keep the retrieval order.
      std::stable_sort(gr.sources.begin(), gr.sources.end(),
                       [](const rag::SearchHit& a, const rag::SearchHit& b) { return *a.rerank_score > *b.rerank_score; });
    }
    if (gr.sources.size() > static_cast<std::size_t>(top_k)) gr.sources.resize(static_cast<std::size_t>(top_k));
    gr.evidence = rag::assess_evidence(gr.sources, policy());
    if (!gr.evidence.sufficient) gr.reason = "no_evidence";
    gr.original_messages = r.messages;
    g.grounded = std::move(gr);
    if (g.grounded->evidence.sufficient && generate) give_sources(g, g.grounded->sources.size());
    return std::nullopt;
  }

  // Puts the first n sources in front of the conversation as one system
  // message (several confuse many chat templates); the rest are dropped.
  void give_sources(Generation& g, std::size_t n) {
    Grounded& gr = *g.grounded;
    gr.sources.resize(std::min(n, gr.sources.size()));
    std::vector<std::size_t> usable;
    for (std::size_t i : gr.evidence.usable)
      if (i < gr.sources.size()) usable.push_back(i);
    gr.evidence.usable = usable;
    ojson messages = gr.original_messages;
    const std::string rules = rag::grounding_instructions(gr.sources, policy());
    if (!messages.empty() && messages[0]["role"] == "system") {
      messages[0]["content"] = rules + "\n" + messages[0]["content"].get<std::string>();
    } else {
      messages.insert(messages.begin(), ojson{{"role", "system"}, {"content", rules}});
    }
    g.request.messages = std::move(messages);
  }

  // Decides a finished grounded answer: one that cites no source is
  // withheld and replaced by the refusal.
  void settle(Generation& g) {
    if (!g.grounded || g.choices.empty() || !g.grounded->reason.empty()) return;
    Choice& c = g.choices[0];
    g.grounded->cited = rag::cited_sources(c.content, g.grounded->sources.size());
    if (g.grounded->cited.empty()) {
      // The reasoning behind an answer withheld goes with it.
      g.grounded->reason = "no_citation";
      c.content = g.grounded->refusal;
      c.reasoning.clear();
    }
  }

  void count_answer(const Grounded& gr) {
    const std::string outcome = !gr.reason.empty() ? gr.reason : gr.generate ? "grounded" : "retrieved";
    metrics.counter("airlock_rag_answers_total", "Grounded questions by outcome (grounded, retrieved, no_evidence, no_citation)",
                    "outcome=\"" + outcome + "\"")
        .inc();
  }

  void observe(const Generation& g) {
    const Clock::time_point end = Clock::now();
    e2e.observe(seconds(end - g.start));
    if (g.first_token) ttft.observe(seconds(*g.first_token - g.start));
    const int n = g.completion_tokens();
    if (g.first_token && g.last_token && n > 1) itl.observe(seconds(*g.last_token - *g.first_token) / (n - 1));
    for (const Choice& c : g.choices)
      if (c.stream && c.stream->admitted_at()) queue.observe(seconds(*c.stream->admitted_at() - c.stream->queued_at()));
    generated_tokens.inc(n);
  }

  void write_audit(const std::string& key, const httplib::Request& req, const Generation* g, int status) {
    if (admitted_key().request == &req) admitted_key().audited = true;
    if (!audit) return;
    AuditEvent e;
    e.key_name = key;
    // Paths are chosen by the caller, refused ones included: a 401 flood of
    // 8 KiB paths would grow the log by 8 KiB a row.
    e.route = req.path.size() <= kMaxAuditRouteBytes ? req.path : req.path.substr(0, kMaxAuditRouteBytes) + "...";
    // Rows the writer adds itself have routes in parentheses; a client's
    // target that is not a path (refused) cannot pass for one.
    if (e.route.empty() || e.route[0] != '/') e.route = "(not a path) " + e.route;
    e.status = status;
    if (g != nullptr) {
      e.model = g->model->id;
      e.request_id = g->id;
      e.prompt_tokens = g->prompt_tokens;
      e.completion_tokens = g->completion_tokens();
      e.latency_s = seconds(Clock::now() - g->start);
      if (config.audit_text) {
        e.prompt_text = g->request.endpoint == Endpoint::kChat
                            ? g->request.messages.dump(-1, ' ', false, ojson::error_handler_t::replace)
                            : g->request.prompt;
        for (const Choice& c : g->choices)
          e.completion_text += c.reasoning.empty() ? c.content : "<think>" + c.reasoning + "</think>" + c.content;
      }
    }
    audit(std::move(e));
  }

  // A streamed answer's progress between calls of its content provider.
  struct StreamState {
    bool started = false;
    bool finished = false;
    int failed_status = 0;  // a failure mid-stream: what its error event said (500, or 503 when draining)
    std::vector<bool> finish_sent;  // per choice: its chunk with finish_reason has been sent
    Clock::time_point last_write;   // of this stream's last tokens (the epoch before the first)
    bool wrote_tokens = false;      // the provider's last call wrote some
    // The Responses API's events: their next sequence number, and the
    // output items opened so far (index -1: not yet).
    std::int64_t sequence = 0;
    int items = 0, reasoning_index = -1, message_index = -1;
    bool reasoning_closed = false;
    std::vector<engine::SampledToken> text_logprobs;  // the message text's, sent (JSON only at the end)
    // Chat and completions: per choice, the event of a chunk that carries
    // text alone, around the text's JSON string (text_frame()).
    std::vector<std::optional<std::pair<std::string, std::string>>> text_frames;
  };
  // What the next events of a stream's choices gave, per choice.
  struct Gathered {
    std::vector<std::string> texts, reasonings;
    std::vector<std::vector<engine::SampledToken>> lps;
    std::vector<std::size_t> lp_first;  // the token number of lps[i][0]
    std::optional<std::size_t> failed;  // a choice that failed (what came before it is above)
  };
  Gathered gather(Generation& g, Clock::time_point last_write) const;
  // Choice i's text chunk as the event before and after its text's JSON
  // string, built once per stream from the chunk written as any other
  // (null where it cannot be split so).
  const std::pair<std::string, std::string>* text_frame(const Generation& g, StreamState& state, std::size_t i) const;
  // One call of a stream's content provider: false when the client has gone.
  bool chat_chunks(Generation& g, StreamState& state, httplib::DataSink& sink);
  bool response_events(Generation& g, StreamState& state, httplib::DataSink& sink);
  // The response object of a Responses request as it stands (`state`: the
  // stream's, whose sent text and log-probabilities it uses).
  ResponseOutput response_output(Generation& g, const StreamState* state) const;

  void completions(const httplib::Request& req, httplib::Response& res, Endpoint endpoint, bool rag_query = false);
  void answer_without_model(const httplib::Request& req, httplib::Response& res, const std::string& key,
                            Generation& g);
  void rag_routes();
};

Server::Server(Config config, Authenticator authenticate, AuditSink audit, Metrics& metrics)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(authenticate), std::move(audit), metrics)) {
  routes();
}

Server::~Server() = default;

void Server::set_model(std::shared_ptr<LoadedModel> model) { impl_->replace_model(std::move(model), ""); }

void Server::withdraw_model(std::string why) { impl_->replace_model(nullptr, std::move(why)); }

bool Server::withdrawn() const {
  std::lock_guard<std::mutex> lock(impl_->model_mu);
  return !impl_->withdrawn_why.empty();
}

std::shared_ptr<LoadedModel> Server::model() const { return impl_->current(); }

namespace {

// bind() and adopt() refuse to serve when the TLS files did not load.
Status tls_loaded(const httplib::Server& http, const Config& c) {
  AIRLOCK_RETURN_IF_ERROR(check_tls_files(c));  // says which file, and checks the client CA
  if (http.is_valid()) return Status::ok();
  return invalid_argument("TLS: cannot load the certificate '" + c.tls_cert + "', key '" + c.tls_key + "'" +
                          (c.tls_client_ca.empty() ? std::string() : " or client CA '" + c.tls_client_ca + "'"));
}

}  // namespace

Result<int> Server::bind() {
  const Config& c = impl_->config;
  AIRLOCK_RETURN_IF_ERROR(tls_loaded(impl_->http, c));
  int port = c.listen_port;
  if (port == 0) {
    port = impl_->http.bind_to_any_port(c.listen_host, AI_NUMERICHOST | AI_PASSIVE);
    if (port <= 0) return io_error("cannot listen on " + c.listen_host, errno);
  } else if (!impl_->http.bind_to_port(c.listen_host, port, AI_NUMERICHOST | AI_PASSIVE)) {
    return io_error("cannot listen on " + c.listen_host + ":" + std::to_string(port), errno);
  }
  if (impl_->listen_fd >= 0) ::listen(impl_->listen_fd, SOMAXCONN);
  impl_->listen_port = port;
  return port;
}

Result<SocketAddress> Server::adopt(int fd) {
  AIRLOCK_RETURN_IF_ERROR(tls_loaded(impl_->http, impl_->config));
  AIRLOCK_ASSIGN_OR_RETURN(SocketAddress address, listening_tcp_address(fd));
  // Not inherited by children (pdftotext); accepted connections inherit
  // TCP_NODELAY from it, as with the sockets httplib creates.
  if (::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) return io_error("socket activation: fcntl", errno);
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  impl_->listen_fd = fd;
  impl_->listen_port = address.port;
  impl_->adopted = true;
  impl_->http.set_idle_interval(0, 100000);  // the accept loop checks for release() every 100 ms
  impl_->listener.adopt(fd);
  return address;
}

void Server::run() {
  if (!impl_->draining) impl_->http.listen_after_bind();
  impl_->run_returned = true;
  if (impl_->adopted) ::close(impl_->listen_fd);  // closed, never shut down: systemd keeps listening
}

bool Server::stopping() const { return impl_->draining; }

void Server::shutdown() {
  impl_->draining = true;
  // Every model requests still hold, the current one first, within one
  // grace period: after a reload, requests admitted before it still run on
  // the model it replaced.
  std::vector<std::shared_ptr<LoadedModel>> models;
  {
    std::lock_guard<std::mutex> lock(impl_->model_mu);
    if (impl_->model) models.push_back(impl_->model);
    for (const std::weak_ptr<LoadedModel>& w : impl_->retired)
      if (std::shared_ptr<LoadedModel> m = w.lock()) models.push_back(std::move(m));
  }
  using std::chrono::steady_clock;
  const auto deadline = steady_clock::now() + std::chrono::seconds(impl_->config.drain_seconds);
  for (const std::shared_ptr<LoadedModel>& m : models)
    m->scheduler->drain(std::chrono::duration_cast<std::chrono::milliseconds>(
        std::max(deadline - steady_clock::now(), steady_clock::duration::zero())));
  models.clear();
  // Let the handlers finish: those writing the answers the drain finished
  // or cancelled (at least 2 s for them), and requests that never run on a
  // scheduler (documents, embeddings) within the same grace period.
  const auto settled = std::max(deadline, steady_clock::now() + std::chrono::seconds(2));
  while ((impl_->in_flight.load() > 0 || impl_->handling.load() > 0) && steady_clock::now() < settled)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (impl_->adopted) {
    impl_->listener.release();
  } else {
    // httplib's stop() does nothing before its listen loop has started: a
    // SIGTERM right after READY=1 would otherwise be lost, and run() serve on.
    while (!impl_->run_returned && !impl_->http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    impl_->http.stop();
  }
  // run() returns once httplib's pool has joined its threads, each of
  // which serves one connection until it ends: one idle between requests
  // waits for the next one up to the keep-alive timeout (30 s), whatever
  // drain_seconds says, and would serve it. Shutting down the connections'
  // reading side ends those waits at once; a handler still running past
  // the grace period still writes its answer. Again until run() returns:
  // a connection accepted while the listener stopped (the accept loop of
  // an adopted socket ends at its next idle tick) is caught by the next
  // round. (From here a connection's socket polls as hung up: the
  // handlers stop asking, and a write that fails still ends an answer.)
  impl_->ending_connections = true;
  while (!impl_->run_returned) {
    shut_down_reading(impl_->listen_port);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void Server::Impl::answer_without_model(const httplib::Request& req, httplib::Response& res, const std::string& key,
                                        Generation& g) {
  Choice c;
  c.content = g.grounded->generate ? g.grounded->refusal : "";
  c.finish = "stop";
  c.done = true;
  g.choices.push_back(std::move(c));
  count_answer(*g.grounded);
  if (g.grounded->answer_shape && !g.request.stream) {
    res.set_content(rag_answer(g).dump(-1, ' ', false, ojson::error_handler_t::replace), "application/json");
  } else if (!g.request.stream) {
    res.set_content(whole_response_text(g), "application/json");
  } else {
    // The whole stream at once: role, the refusal, the finish with the
    // grounding outcome, usage when asked, [DONE].
    std::string body;
    auto chunk = [&](ojson choices) { return chunk_of(g, std::move(choices)); };
    body += sse(chunk(ojson::array({choice_delta(g, 0, "", {}, 0, "", true)})));
    if (!g.choices[0].content.empty())
      body += sse(chunk(ojson::array({choice_delta(g, 0, g.choices[0].content, {}, 0, "", false)})));
    ojson fin = chunk(ojson::array({choice_delta(g, 0, "", {}, 0, "stop", false)}));
    fin["airlock"] = grounding_json(*g.grounded);
    body += sse(fin);
    if (g.request.include_usage) {
      ojson u = chunk_base(g);
      u["choices"] = ojson::array();
      u["usage"] = g.usage();
      body += sse(u);
    }
    body += "data: [DONE]\n\n";
    res.set_header("Cache-Control", "no-cache");
    res.set_content(body, "text/event-stream");
  }
  write_audit(key, req, &g, 200);
}

namespace {

// The prefix-cache scope of an API key (prefix_cache = "per_key"): a keyed
// hash of its name (keyed per process, so no two names can be made to
// collide), never 0, the scope of "shared".
std::uint64_t cache_scope_of(const std::string& key) {
  static const std::array<unsigned char, crypto_shorthash_KEYBYTES> secret = [] {
    std::array<unsigned char, crypto_shorthash_KEYBYTES> a{};
    randombytes_buf(a.data(), a.size());
    return a;
  }();
  std::uint64_t out = 0;
  crypto_shorthash(reinterpret_cast<unsigned char*>(&out), reinterpret_cast<const unsigned char*>(key.data()), key.size(),
                   secret.data());
  return out | 1;
}

}  // namespace

void Server::Impl::completions(const httplib::Request& req, httplib::Response& res, Endpoint endpoint, bool rag_query) {
  Clock::time_point start = Clock::now();
  const std::string key = key_of(req).value_or("");
  auto fail = [&](const ApiError& e) {
    send_error(res, e);
    write_audit(key, req, nullptr, e.http_status);
  };
  if (std::optional<ApiError> e = body_room(req)) return fail(*e);
  if (draining) return fail(api_error(503, "server_error", "the server is shutting down"));
  std::shared_ptr<LoadedModel> m = current();
  if (!m) return fail(api_error(503, "server_error", no_model()));
  auto g = std::make_shared<Generation>();
  g->start = start;
  g->model = m;
  g->id = random_id(rag_query                          ? "rag-"
                    : endpoint == Endpoint::kChat        ? "chatcmpl-"
                    : endpoint == Endpoint::kResponses   ? "resp_"
                                                         : "cmpl-");
  g->created = static_cast<std::int64_t>(std::time(nullptr));
  bool generate = true;
  if (rag_query) {
    if (auto e = parse_rag_query(req.body, m->id, &g->request, &generate)) return fail(*e);
  } else if (endpoint == Endpoint::kResponses) {
    if (auto e = parse_responses_request(req.body, &g->request)) return fail(*e);
  } else if (auto e = parse_request(req.body, endpoint, &g->request)) {
    return fail(*e);
  }
  CompletionRequest& r = g->request;
  if (r.model != m->id)
    return fail(unknown_model(r.model));
  for (const auto& [t, bias] : r.sampling.logit_bias)
    if (t >= m->tokenizer->n_vocab()) {
      ApiError e = api_error(400, "invalid_request_error",
                             "logit_bias: token " + std::to_string(t) + " is not in this model's vocabulary of " +
                                 std::to_string(m->tokenizer->n_vocab()));
      e.param = "logit_bias";
      return fail(e);
    }
  if (auto e = check_template_inputs(*m, r)) return fail(*e);
  // A forced call: the answer is held to calls in the model's form. Tools
  // beside a JSON response_format: to calls, or else the JSON answer.
  std::shared_ptr<const engine::Grammar> answer_grammar = r.response_grammar;
  if (r.tool_required || (r.json_object && !r.tools.empty())) {
    std::string why;
    answer_grammar = tool_call_grammar(m->tool_format, r.tool_specs, r.forced_tool, r.parallel_tool_calls, &why,
                                       r.tool_required ? nullptr : &r.response_schema);
    if (!answer_grammar) {
      // Beside a JSON answer, a tool that cannot be held is the tools' fault.
      const bool a_tool = !r.tool_required && why.rfind("tools[", 0) == 0;
      if (a_tool && r.responses) why = flat_tool_paths(std::move(why));
      const char* param = r.tool_required ? "tool_choice" : a_tool ? "tools" : r.responses ? "text.format" : "response_format";
      ApiError e = api_error(400, "invalid_request_error", a_tool ? why : std::string(param) + ": " + why);
      e.param = param;
      return fail(e);
    }
  }
  if (r.grounding) {
    if (auto e = ground(*m, key, *g, rag_query, generate)) return fail(*e);
    // Weak evidence: the model is not asked at all.
    if (!g->grounded->reason.empty() || !generate) return answer_without_model(req, res, key, *g);
  }
  ReasoningStart reasoning_at = ReasoningStart::kBefore;
  Result<std::vector<std::int32_t>> prompt = prompt_tokens_of(*m, r, &reasoning_at);
  if (!prompt.is_ok()) return fail(api_error(400, "invalid_request_error", prompt.status().message()));
  const int max_ctx = m->scheduler->max_context();
  // OpenAI names the messages (or the prompt) in a context-length error.
  const std::string prompt_param = r.responses ? "input" : r.endpoint == Endpoint::kChat ? "messages" : "prompt";
  auto too_long = [](const std::string& message, const std::string& param) {
    ApiError e = api_error(400, "invalid_request_error", message, "context_length_exceeded");
    e.param = param;
    return e;
  };
  // A grounded prompt gives up its weakest sources until it leaves room for
  // the answer (max_tokens, or a quarter of the context).
  if (g->grounded) {
    const int room = r.max_tokens.value_or(max_ctx / 4);
    if (room >= max_ctx)  // no number of sources can help
      return fail(too_long("max_tokens (" + std::to_string(room) + ") leaves no room for a prompt in the context of " +
                               std::to_string(max_ctx),
                           "max_tokens"));
    Grounded& gr = *g->grounded;
    if (static_cast<int>(prompt->size()) + room > max_ctx && gr.sources.size() > 1) {
      // The most sources that fit, by bisection: each try renders and
      // tokenises the whole conversation, so not one try per source.
      const std::vector<rag::SearchHit> all = gr.sources;
      const std::vector<std::size_t> all_usable = gr.evidence.usable;
      auto keep = [&](std::size_t k) -> Result<bool> {
        gr.sources = all;
        gr.evidence.usable = all_usable;
        give_sources(*g, k);
        prompt = prompt_tokens_of(*m, r, &reasoning_at);
        if (!prompt.is_ok()) return prompt.status();
        return static_cast<int>(prompt->size()) + room <= max_ctx;
      };
      std::size_t fits = 1, fails = all.size();  // fails: known not to fit
      Result<bool> ok = keep(1);
      while (ok.is_ok() && *ok && fails - fits > 1) {
        const std::size_t mid = fits + (fails - fits) / 2;
        Result<bool> f = keep(mid);
        if (!f.is_ok()) ok = f;
        else (*f ? fits : fails) = mid;
      }
      if (ok.is_ok() && *ok && gr.sources.size() != fits) ok = keep(fits);
      if (!ok.is_ok()) return fail(api_error(400, "invalid_request_error", ok.status().message()));
    }
    if (g->grounded->evidence.usable.empty()) {  // the sources that counted did not fit
      g->grounded->reason = "no_evidence";
      return answer_without_model(req, res, key, *g);
    }
  }
  // The prompts, each answered with n choices: chat has one; /v1/completions
  // may send several (choice index = prompt index * n + k, as OpenAI).
  std::vector<std::vector<std::int32_t>> inputs;
  inputs.push_back(std::move(*prompt));
  for (std::size_t p = 1; p < r.prompts.size(); ++p)
    inputs.push_back(completion_prompt_tokens(*m, r.prompts[p]));
  std::vector<int> max_tokens(inputs.size());
  for (std::size_t p = 0; p < inputs.size(); ++p) {
    const int n_prompt = static_cast<int>(inputs[p].size());
    const std::string which = inputs.size() > 1 ? "prompt " + std::to_string(p) : "the prompt";
    if (n_prompt >= max_ctx)
      return fail(too_long(which + " is " + std::to_string(n_prompt) + " tokens; this model's context is " +
                               std::to_string(max_ctx),
                           prompt_param));
    // Without max_tokens a chat answer may run to the end of the context; a
    // completion stops at 16 tokens, OpenAI's default for that endpoint.
    const int room = max_ctx - n_prompt;
    max_tokens[p] = r.max_tokens.value_or(r.endpoint == Endpoint::kCompletions ? std::min(16, room) : room);
    if (n_prompt + max_tokens[p] > max_ctx)
      return fail(too_long(which + " (" + std::to_string(n_prompt) + " tokens) plus " +
                               (r.responses ? "max_output_tokens" : "max_tokens") + " (" +
                               std::to_string(max_tokens[p]) + ") exceeds the context of " + std::to_string(max_ctx),
                           prompt_param));
    g->prompt_tokens += n_prompt;  // each prompt once, however many choices (as OpenAI counts)
  }
  for (const std::string& s : r.stop) g->max_stop = std::max(g->max_stop, s.size());
  g->split_reasoning = r.endpoint == Endpoint::kChat && m->reasoning != ReasoningFormat::kNone;

  const std::uint64_t cache_scope = config.prefix_cache_per_key ? cache_scope_of(key) : 0;
  for (std::size_t p = 0; p < inputs.size(); ++p) {
    // Continue the prompt's text: keep a SentencePiece leading space unless
    // generation starts right after BOS.
    const bool after_text = !(inputs[p].size() == 1 && inputs[p][0] == m->tokenizer->bos());
    for (int i = 0; i < r.n; ++i) {
      engine::GenerationRequest gr;
      gr.prompt = inputs[p];
      gr.cache_scope = cache_scope;
      gr.max_tokens = max_tokens[p];
      gr.sampling = r.sampling;
      const std::uint64_t k = p * static_cast<std::uint64_t>(r.n) + static_cast<std::uint64_t>(i);  // the choice's index
      if (r.seeded) gr.sampling.seed = r.sampling.seed + k;
      else randombytes_buf(&gr.sampling.seed, sizeof gr.sampling.seed);
      if (!r.ignore_eos) gr.stop_tokens = m->end_of_generation;
      // JSON mode, a schema or a forced call: the answer is held to it,
      // after the thinking of a model that thinks (its own block, or the
      // one its prompt opened).
      if (r.json_object || r.tool_required) {
        std::optional<engine::ThinkBlock> think;
        if (g->split_reasoning && reasoning_at != ReasoningStart::kAfter)
          think = engine::ThinkBlock{reasoning_at == ReasoningStart::kInside ? "" : std::string(kThinkOpen),
                                     std::string(kThinkClose)};
        // Mistral writes its calls after the [TOOL_CALLS] control token:
        // a forced answer may begin with it, as the model would.
        std::vector<std::int32_t> lead;
        if (!r.tools.empty() && m->tool_format == ToolFormat::kMistral)
          if (const std::int32_t t = m->tokenizer->token_id(kMistralCallsToken); t >= 0) lead.push_back(t);
        gr.constraint =
            std::make_shared<engine::JsonConstraint>(m->json_vocab, std::move(think), answer_grammar, std::move(lead));
      }
      Result<std::shared_ptr<TokenStream>> s = m->scheduler->submit(std::move(gr));
      if (!s.is_ok()) {
        g->cancel_all();
        const Status& st = s.status();
        if (st.code() == StatusCode::kResourceExhausted)
          return fail(api_error(429, "rate_limit_error", st.message() + "; retry later", "queue_full"));
        if (st.code() == StatusCode::kUnavailable) return fail(api_error(503, "server_error", st.message()));
        return fail(api_error(400, "invalid_request_error", st.message()));
      }
      Choice c;
      c.stream = *s;
      c.decoder = std::make_unique<engine::StreamDecoder>(
          *m->tokenizer, after_text ? engine::StreamDecoder::LeadingSpace::kKeep : engine::StreamDecoder::LeadingSpace::kStrip);
      if (g->calls_tools()) c.tool_stream = ToolStream(m->tool_format);
      c.split = ReasoningSplitter(g->split_reasoning && reasoning_at != ReasoningStart::kAfter,
                                  reasoning_at == ReasoningStart::kInside);
      if (r.endpoint == Endpoint::kCompletions && r.echo) c.echo = r.prompts[p];
      g->choices.push_back(std::move(c));
    }
  }
  prompt_tokens.inc(static_cast<double>(g->prompt_tokens) * r.n);
  waiting_for_tokens(true);

  if (!r.stream) {
    // Nothing is written until the answer is whole, so a client that hangs
    // up is noticed on its socket, checked after every step's tokens.
    const std::optional<PeerSocket> peer = this_connection();
    for (Choice& c : g->choices)
      while (!c.done) {
        for (TokenEvent& e : c.stream->pop(std::chrono::milliseconds(100))) (void)g->on_event(c, e);
        if (peer && !ending_connections && peer->peer_closed()) {
          // Counted and audited, then its sequences are freed (so that
          // whoever sees the blocks come back finds it in the metrics),
          // also if one of those throws.
          struct CancelAll {
            Generation& g;
            ~CancelAll() { g.cancel_all(); }
          } cancel{*g};
          observe(*g);
          send_error(res, api_error(499, "invalid_request_error", "the client closed the connection"));
          count(req, 499);
          write_audit(key, req, g.get(), 499);
          return;
        }
      }
    for (const Choice& c : g->choices)
      if (!c.error.is_ok()) {
        observe(*g);
        const int status = c.error.code() == StatusCode::kUnavailable ? 503 : 500;
        send_error(res, api_error(status, "server_error", c.error.message()));
        write_audit(key, req, g.get(), status);
        return;
      }
    observe(*g);
    settle(*g);
    if (g->calls_tools())
      for (Choice& c : g->choices) (void)g->tool_output(c);
    if (g->grounded) count_answer(*g->grounded);
    if (g->grounded && g->grounded->answer_shape)
      res.set_content(rag_answer(*g).dump(-1, ' ', false, ojson::error_handler_t::replace), "application/json");
    else if (r.responses)
      res.set_content(response_json(*r.responses, response_output(*g, nullptr))
                          .dump(-1, ' ', false, ojson::error_handler_t::replace),
                      "application/json");
    else
      res.set_content(whole_response_text(*g), "application/json");
    write_audit(key, req, g.get(), 200);
    return;
  }

  // Server-Sent Events as tokens arrive: chat and completions chunks, or
  // the Responses API's typed events.
  ++in_flight;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  auto state = std::make_shared<StreamState>();
  state->finish_sent.assign(g->choices.size(), false);
  state->text_frames.resize(g->choices.size());
  // Output can be held back for long (a grounded answer until it cites, a
  // tool call until it is whole), and the HTTP library notices a client that
  // left only when a write fails: its socket is checked at each call that
  // follows one which wrote no tokens. After tokens the next writes tell:
  // the first write after the client has gone still succeeds, and they
  // fail once the client's reset has come back (a token or so later, and
  // a poll less per token).
  const std::optional<PeerSocket> peer = this_connection();
  auto provider = [this, g, state, peer](std::size_t, httplib::DataSink& sink) -> bool {
    if (peer && !ending_connections && !state->wrote_tokens && peer->peer_closed()) return false;
    const Clock::time_point before = state->last_write;
    const bool ok = g->request.responses ? response_events(*g, *state, sink) : chat_chunks(*g, *state, sink);
    state->wrote_tokens = state->last_write != before;
    return ok;
  };
  res.set_chunked_content_provider(
      "text/event-stream", std::move(provider),
      [this, g, state, key, path = req.path](bool success) {
        // The client went away (or the stream ended): counted and audited,
        // then its sequences are freed (so that whoever sees the blocks
        // come back finds the request in the metrics).
        observe(*g);
        // Audited and counted as what the client was told: the error event's
        // status for a failure mid-stream (the HTTP status was 200 by then).
        const int status = !(state->finished && success) ? 499 : state->failed_status != 0 ? state->failed_status : 200;
        count_route(path, status);
        if (audit) {
          httplib::Request fake;
          fake.path = path;
          write_audit(key, fake, g.get(), status);
        }
        g->cancel_all();
        --in_flight;
      });
}

const std::pair<std::string, std::string>* Server::Impl::text_frame(const Generation& g, StreamState& state,
                                                                   std::size_t i) const {
  std::optional<std::pair<std::string, std::string>>& frame = state.text_frames.at(i);
  if (!frame) {
    // The chunk written as any other, with a marker for its text: split
    // where the marker's JSON string is (once, or the frame stays empty and
    // such chunks are written whole).
    static constexpr std::string_view kMarker = "\"airlock-text-frame-marker\"";
    const std::string event = sse(chunk_of(
        g, ojson::array({choice_delta(g, i, std::string(kMarker.substr(1, kMarker.size() - 2)), {}, 0, "", false)})));
    const std::size_t at = event.find(kMarker);
    frame.emplace();
    if (at != std::string::npos && event.find(kMarker, at + 1) == std::string::npos)
      *frame = {event.substr(0, at), event.substr(at + kMarker.size())};
  }
  return frame->first.empty() ? nullptr : &*frame;
}

Server::Impl::Gathered Server::Impl::gather(Generation& g, Clock::time_point last_write) const {
  Gathered got;
  got.texts.resize(g.choices.size());
  got.reasonings.resize(g.choices.size());
  got.lps.resize(g.choices.size());
  got.lp_first.assign(g.choices.size(), 0);
  // Wait for the next events of any choice, then take what they gave. With
  // a stream interval, collect until that much time has passed since the
  // last write or a choice ends, without waking for each token. The
  // interval runs from the last write of tokens (the role chunk written
  // alone does not hold back the first token). Within the interval the
  // first wait is already until its end: a fast stream's thread wakes once
  // per write, not also for the first token after it.
  const std::chrono::milliseconds interval = stream_interval(config, g.model->model->backend().uses_host_cores());
  bool any = false;
  Clock::time_point deadline;
  const Clock::time_point not_before = last_write + interval;
  // Up to 50 rounds (about 0.5 s per choice) waiting for a first token;
  // once one has come, until the deadline.
  for (int round = 0; (any || round < 50) && !g.all_done(); ++round) {
    if (any && Clock::now() >= deadline) break;
    bool waited = false;  // this round has waited for the deadline (or a choice's end)
    for (std::size_t i = 0; i < g.choices.size(); ++i) {
      Choice& c = g.choices[i];
      if (c.done) continue;
      std::vector<TokenEvent> events;
      if (!any && Clock::now() < not_before)
        events = std::exchange(waited, true) ? c.stream->pop(std::chrono::milliseconds(0))
                                             : c.stream->pop_until(not_before);
      else if (!any) events = c.stream->pop(std::chrono::milliseconds(10));
      else if (!std::exchange(waited, true)) events = c.stream->pop_until(deadline);
      else events = c.stream->pop(std::chrono::milliseconds(0));
      for (TokenEvent& e : events) {
        std::string text = g.on_event(c, e);
        if (g.grounded && !g.grounded->released) {
          // Nothing of a grounded answer is shown until it cites a source.
          Grounded& gr = *g.grounded;
          const bool may_cite = text.find(']') != std::string::npos;  // a citation completes with ']'
          gr.pending += text;
          text.clear();
          // Scanned from where a citation can still begin (rescanning the
          // whole answer at every ']' was quadratic).
          if (may_cite && rag::cites_a_source(c.content, gr.sources.size(), &gr.scan_from)) {
            gr.released = true;
            text.swap(gr.pending);
          }
        }
        // With tools, content goes out as far as no call can start in it;
        // the rest when the answer ends (tool_content_delta).
        if (g.calls_tools()) text = g.tool_content_delta(c);
        // Reasoning streams as it comes, but a grounded answer's waits with
        // its content.
        if (!g.grounded || g.grounded->released) {
          got.reasonings[i].append(c.reasoning, c.reasoning_sent);
          c.reasoning_sent = c.reasoning.size();
        }
        // Entries move to this write and leave the choice: a stream holds
        // only what it has not sent yet.
        if (got.lps[i].empty()) got.lp_first[i] = c.logprobs_base;
        for (engine::SampledToken& t : c.logprobs) got.lps[i].push_back(std::move(t));
        c.logprobs_base += c.logprobs.size();
        c.logprobs.clear();
        got.texts[i] += text;
        if (!any && (!got.texts[i].empty() || !got.lps[i].empty() || !got.reasonings[i].empty())) {
          any = true;
          deadline = last_write + interval;
        }
        if (c.done && !c.error.is_ok()) {
          got.failed = i;
          return got;
        }
      }
    }
  }
  return got;
}

bool Server::Impl::chat_chunks(Generation& g, StreamState& state, httplib::DataSink& sink) {
  // The events of one call go out in one write (one system call and one
  // chunk however many tokens arrived since the last call).
  std::string pending;
  auto send = [&](const ojson& j) {
    pending += sse(j);
    return true;
  };
  auto flush = [&] {
    const bool ok = pending.empty() || sink.write(pending.data(), pending.size());
    pending.clear();
    return ok;
  };
  auto chunk = [&](ojson choices) { return chunk_of(g, std::move(choices)); };
  if (!state.started) {
    state.started = true;
    if (g.request.endpoint == Endpoint::kChat)
      for (std::size_t i = 0; i < g.choices.size(); ++i)
        if (!send(chunk(ojson::array({choice_delta(g, i, "", {}, 0, "", true)})))) return false;
    // echo: each choice's text begins with the prompt, streamed too.
    if (g.request.endpoint == Endpoint::kCompletions && g.request.echo)
      for (std::size_t i = 0; i < g.choices.size(); ++i)
        if (!send(chunk(ojson::array({choice_delta(g, i, g.choices[i].echo, {}, 0, "", false)})))) return false;
  }
  // One chunk per choice however many tokens it brought. A chunk of text
  // alone (the common one) is its cached frame around the text's JSON.
  Gathered got = gather(g, state.last_write);
  auto send_deltas = [&] {
    for (std::size_t i = 0; i < g.choices.size(); ++i) {
      if (got.texts[i].empty() && got.lps[i].empty() && got.reasonings[i].empty()) continue;
      state.last_write = Clock::now();
      if (got.lps[i].empty() && got.reasonings[i].empty())
        if (const std::pair<std::string, std::string>* frame = text_frame(g, state, i)) {
          pending += frame->first;
          pending += ojson(std::move(got.texts[i])).dump(-1, ' ', false, ojson::error_handler_t::replace);
          pending += frame->second;
          continue;
        }
      if (!send(chunk(ojson::array(
              {choice_delta(g, i, got.texts[i], got.lps[i], got.lp_first[i], "", false, got.reasonings[i])}))))
        return false;
    }
    return true;
  };
  if (!send_deltas()) return false;
  if (got.failed) {
    // A failure mid-stream: what came before it, an error event, then the
    // stream ends.
    const Choice& c = g.choices[*got.failed];
    state.failed_status = c.error.code() == StatusCode::kUnavailable ? 503 : 500;
    pending += "data: " + error_body(api_error(state.failed_status, "server_error", c.error.message())) + "\n\n";
    flush();
    g.cancel_all();
    state.finished = true;
    sink.done();
    return true;
  }
  // With n > 1 a choice that has ended gets its finish chunk now, not when
  // the last one ends (OpenAI sends each as it comes). A grounded answer
  // (n = 1) waits: its chunk carries the citations. A choice's calls go out
  // whole, in one delta before its finish chunk.
  auto send_tool_calls = [&](std::size_t i) {
    Choice& c = g.choices[i];
    if (!g.calls_tools() || g.tool_output(c).calls.empty()) return true;
    ojson ch = choice_delta(g, i, "", {}, 0, "", false);
    ch["delta"]["tool_calls"] = Generation::tool_calls_json(*c.tool_output, true);
    return send(chunk(ojson::array({std::move(ch)})));
  };
  if (!g.grounded)
    for (std::size_t i = 0; i < g.choices.size(); ++i)
      if (g.choices[i].done && g.choices[i].error.is_ok() && !state.finish_sent[i]) {
        if (!send_tool_calls(i)) return false;
        if (!send(chunk(ojson::array({choice_delta(g, i, "", {}, 0, g.choices[i].finish, false)})))) return false;
        state.finish_sent[i] = true;
      }
  if (!g.all_done()) return flush();  // called again
  if (g.grounded) {
    settle(g);
    count_answer(*g.grounded);
    if (g.grounded->reason == "no_citation" &&
        !send(chunk(ojson::array({choice_delta(g, 0, g.choices[0].content, {}, 0, "", false)}))))
      return false;
  }
  for (std::size_t i = 0; i < g.choices.size(); ++i) {
    if (state.finish_sent[i]) continue;
    if (!send_tool_calls(i)) return false;
    ojson fin = chunk(ojson::array({choice_delta(g, i, "", {}, 0, g.choices[i].finish, false)}));
    if (g.grounded) fin["airlock"] = grounding_json(*g.grounded);
    if (!send(fin)) return false;
  }
  if (g.request.include_usage) {
    ojson u = chunk_base(g);
    u["choices"] = ojson::array();
    u["usage"] = g.usage();
    if (!send(u)) return false;
  }
  pending += "data: [DONE]\n\n";
  if (!flush()) return false;
  state.finished = true;
  sink.done();
  return true;
}

namespace {
// A response's items' ids follow its own (resp_X: rs_X, msg_X).
std::string item_id(const Generation& g, const char* prefix) { return prefix + g.id.substr(5); }
}  // namespace

ResponseOutput Server::Impl::response_output(Generation& g, const StreamState* state) const {
  Choice& c = g.choices.at(0);
  ResponseOutput out;
  out.id = g.id;
  out.created_at = g.created;
  out.model = g.model->id;
  out.reasoning_id = item_id(g, "rs_");
  out.message_id = item_id(g, "msg_");
  if (!c.done) return out;
  out.usage = responses_usage(g.prompt_tokens, g.cached_tokens(), g.completion_tokens(), g.reasoning_tokens());
  out.reasoning_ended = !c.split.in_reasoning();
  if (!c.error.is_ok()) {
    // What came before the failure, as far as it was shown, its items
    // incomplete; no call (an answer cut short is not read for calls).
    out.status = "failed";
    out.error = {{"code", "server_error"}, {"message", c.error.message()}};
    out.reasoning = state ? c.reasoning.substr(0, c.reasoning_sent) : c.reasoning;
    out.text = g.calls_tools() ? c.content.substr(0, c.tool_sent) : c.content;
    out.has_message = !out.text.empty();
    return out;
  }
  out.status = c.finish == "length" ? "incomplete" : "completed";
  out.reasoning = c.reasoning;
  if (g.calls_tools()) {
    const ToolOutput& t = g.tool_output(c);
    out.text = t.content;
    out.calls = t.calls;
  } else {
    out.text = c.content;
  }
  // A message when there is text, or when nothing else came (an answer
  // cut inside its reasoning is the reasoning item alone, as OpenAI's).
  out.has_message = !out.text.empty() || (out.calls.empty() && out.reasoning.empty());
  if (g.request.logprobs) {
    out.logprobs = ojson::array();
    for (const engine::SampledToken& t : state ? state->text_logprobs : c.logprobs)
      out.logprobs.push_back(g.token_logprob(t));
  }
  return out;
}

bool Server::Impl::response_events(Generation& g, StreamState& state, httplib::DataSink& sink) {
  const ResponsesEcho& echo = *g.request.responses;
  std::string pending;
  // Every event carries its type and a sequence number, named in the SSE
  // event line too (as OpenAI writes them).
  auto event = [&](const char* type, ojson fields) {
    ojson e = {{"type", type}, {"sequence_number", state.sequence++}};
    for (auto& [k, v] : fields.items()) e[k] = std::move(v);
    pending += "event: ";
    pending += type;
    pending += '\n';
    pending += sse(e);
  };
  auto flush = [&] {
    const bool ok = pending.empty() || sink.write(pending.data(), pending.size());
    pending.clear();
    return ok;
  };
  auto at = [](const std::string& item_id, int index) {
    return ojson({{"item_id", item_id}, {"output_index", index}, {"content_index", 0}});
  };
  auto with = [](ojson base, const char* key, ojson value) {
    base[key] = std::move(value);
    return base;
  };
  const std::string reasoning_id = item_id(g, "rs_"), message_id = item_id(g, "msg_");
  if (!state.started) {
    state.started = true;
    const ojson snapshot = response_json(echo, response_output(g, &state));
    event("response.created", {{"response", snapshot}});
    event("response.in_progress", {{"response", snapshot}});
  }
  Choice& c = g.choices.at(0);
  // Closed when the message opens (the reasoning has ended), or at the end
  // with the status the response gives it.
  auto close_reasoning = [&](const std::string& status) {
    if (state.reasoning_index < 0 || state.reasoning_closed) return;
    state.reasoning_closed = true;
    const ojson where = at(reasoning_id, state.reasoning_index);
    const ojson part = {{"type", "reasoning_text"}, {"text", c.reasoning}};
    event("response.reasoning_text.done", with(where, "text", c.reasoning));
    event("response.content_part.done", with(where, "part", part));
    event("response.output_item.done", {{"output_index", state.reasoning_index},
                                        {"item", reasoning_item(reasoning_id, c.reasoning, status)}});
  };
  auto open_message = [&] {
    if (state.message_index >= 0) return;
    close_reasoning("completed");
    state.message_index = state.items++;
    event("response.output_item.added",
          {{"output_index", state.message_index},
           {"item", message_item(message_id, "", ojson(), "in_progress", /*with_content=*/false)}});
    event("response.content_part.added",
          with(at(message_id, state.message_index), "part", output_text_part("", ojson())));
  };

  Gathered got = gather(g, state.last_write);
  if (!got.reasonings[0].empty()) {
    if (state.reasoning_index < 0) {
      state.reasoning_index = state.items++;
      event("response.output_item.added",
            {{"output_index", state.reasoning_index}, {"item", reasoning_item(reasoning_id, "", "in_progress")}});
      event("response.content_part.added", with(at(reasoning_id, state.reasoning_index), "part",
                                                {{"type", "reasoning_text"}, {"text", ""}}));
    }
    event("response.reasoning_text.delta", with(at(reasoning_id, state.reasoning_index), "delta", got.reasonings[0]));
    state.last_write = Clock::now();
  }
  if (!got.texts[0].empty() || !got.lps[0].empty()) {
    open_message();
    ojson lps = ojson::array();
    for (engine::SampledToken& t : got.lps[0]) {
      lps.push_back(g.token_logprob(t));
      state.text_logprobs.push_back(std::move(t));
    }
    ojson delta = with(at(message_id, state.message_index), "delta", got.texts[0]);
    delta["logprobs"] = std::move(lps);
    event("response.output_text.delta", std::move(delta));
    state.last_write = Clock::now();
  }
  if (got.failed) {
    // A failure mid-stream: the response fails, and the stream ends.
    state.failed_status = c.error.code() == StatusCode::kUnavailable ? 503 : 500;
    event("response.failed", {{"response", response_json(echo, response_output(g, &state))}});
    flush();
    g.cancel_all();
    state.finished = true;
    sink.done();
    return true;
  }
  if (!c.done) return flush();  // called again

  // The end: the items still open are closed, the calls follow whole, and
  // the response as it ended.
  ResponseOutput out = response_output(g, &state);
  close_reasoning(reasoning_status(out));
  const std::string ended = out.status == "incomplete" ? "incomplete" : "completed";
  if (out.has_message) {
    open_message();
    const ojson where = at(message_id, state.message_index);
    ojson done = with(where, "text", out.text);
    done["logprobs"] = out.logprobs.is_array() ? out.logprobs : ojson::array();
    event("response.output_text.done", std::move(done));
    event("response.content_part.done", with(where, "part", output_text_part(out.text, out.logprobs)));
    event("response.output_item.done",
          {{"output_index", state.message_index}, {"item", message_item(message_id, out.text, out.logprobs, ended)}});
  }
  for (const ToolCall& call : out.calls) {
    const int index = state.items++;
    const std::string id = function_call_item_id(call);
    event("response.output_item.added", {{"output_index", index}, {"item", function_call_item(call, "", "in_progress")}});
    event("response.function_call_arguments.delta", {{"item_id", id}, {"output_index", index}, {"delta", call.arguments}});
    event("response.function_call_arguments.done",
          {{"item_id", id}, {"output_index", index}, {"name", call.name}, {"arguments", call.arguments}});
    event("response.output_item.done",
          {{"output_index", index}, {"item", function_call_item(call, call.arguments, "completed")}});
  }
  event(out.status == "incomplete" ? "response.incomplete" : "response.completed",
        {{"response", response_json(echo, out)}});
  if (!flush()) return false;
  state.finished = true;
  sink.done();
  return true;
}

void Server::routes() {
  Impl& s = *impl_;
  httplib::Server& h = s.http;
  h.new_task_queue = [kept = http_thread_count(s.config), max = http_thread_cap(s.config), &idle = s.listener.idle] {
    return new ConnectionThreads(kept, max, idle);
  };
  // Documents may be larger than other requests (rag.max_document_bytes,
  // base64 in JSON adds a third); every other route's body is held to
  // max_body_bytes by the pre-routing handler, from its Content-Length,
  // before it is read (and by body_refused() after). httplib reads a
  // body only after the pre-routing handler has checked the key.
  h.set_payload_max_length(payload_limit(s.config));
  h.set_keep_alive_timeout(30);
  // Streams send small writes (a token or a few at a time): with Nagle's
  // algorithm a write behind one not yet acknowledged can wait for the
  // client's delayed ACK (up to 40 ms on Linux). The listening socket's
  // TCP_NODELAY is inherited by every accepted connection.
  h.set_tcp_nodelay(true);
  // Remember the listening socket: httplib listens with a backlog of 5,
  // which drops the SYNs of a burst of clients (each retried a second
  // later); bind() raises it.
  h.set_socket_options([&s](socket_t sock) {
    httplib::default_socket_options(sock);
    s.listen_fd = sock;
  });

  h.set_pre_routing_handler([&s](const httplib::Request& req, httplib::Response& res) {
    // (A request whose logger never ran leaves its count: given back here.)
    if (Impl::admitted_key().handling) --s.handling;
    Impl::admitted_key() = {&req, req.path == "/health" ? std::nullopt : s.check_key(req)};
    Impl::admitted_key().handling = true;
    ++s.handling;
    // A refusal that leaves bytes unread: counted and audited before it is
    // written (the post-routing handler); the logger ends the connection
    // once it is written (end_answers).
    auto refuse_and_close = [&](const ApiError& e) {
      s.send_error(res, e);
      res.set_header("Connection", "close");
      Impl::admitted_key().unread_bytes = true;
      return httplib::Server::HandlerResponse::Handled;
    };
    if (req.path.empty() || req.path[0] != '/')  // "GET (audit gap)": no route, and no look-alike audit rows
      return refuse_and_close(api_error(400, "invalid_request_error", "the request target must be a path ('/...')"));
    // Routes take GET (and HEAD), POST and DELETE. httplib reads the body of
    // a PUT, PATCH or PRI before finding no route for it, a PRI's without
    // a length until the client closes (inflating it if it says gzip): any
    // other method is refused first, without a key.
    if (req.method != "GET" && req.method != "HEAD" && req.method != "POST" && req.method != "DELETE") {
      res.set_header("Allow", "GET, HEAD, POST, DELETE");
      return refuse_and_close(api_error(405, "invalid_request_error",
                                        "method " + req.method + " is not served (GET, HEAD, POST, DELETE are)",
                                        "method_not_allowed"));
    }
    if (const std::optional<std::string> why = ambiguous_framing(req))
      return refuse_and_close(api_error(400, "invalid_request_error", *why));
    if (body_left_unread(req, /*answered_early=*/false))  // a GET with a body, /health's too
      return refuse_and_close(api_error(400, "invalid_request_error", "a " + req.method + " request carries no body"));
    if (req.path == "/health") {
      // No key is needed here, so nothing but a bodiless GET or HEAD gets
      // further: httplib would read a POST's (PUT's, ...) body before
      // finding that no handler takes it, and a chunked one or one without
      // a length whole, for anyone who can connect.
      if (req.method == "GET" || req.method == "HEAD") return httplib::Server::HandlerResponse::Unhandled;
      res.set_header("Allow", "GET, HEAD");
      return refuse_and_close(api_error(405, "invalid_request_error", "/health answers GET and HEAD only, without a body",
                                        "method_not_allowed"));
    }
    if (!s.key_of(req)) {
      ApiError e = api_error(401, "invalid_request_error",
                             "missing or invalid API key: send 'Authorization: Bearer <key>' (airlock keys create)",
                             "invalid_api_key");
      s.send_error(res, e);
      res.set_header("WWW-Authenticate", "Bearer");
      // Its body is not read: the connection ends after this answer
      // (the logger), or the body's bytes would be taken for a request.
      if (body_left_unread(req, /*answered_early=*/true)) {
        res.set_header("Connection", "close");
        Impl::admitted_key().unread_bytes = true;
      }
      s.count(req, 401);
      s.write_audit("", req, nullptr, 401);  // refused attempts are audited too
      return httplib::Server::HandlerResponse::Handled;
    }
    // httplib limits a body only by its Content-Length: a chunked body, or
    // a POST without a length (read until the client closes), would be
    // held in memory whole before any limit applied. Such requests get
    // 411 before their body is read (OpenAI's SDKs always send a length).
    if (const std::optional<std::string> why = unbounded_body(req))
      return refuse_and_close(api_error(411, "invalid_request_error", *why, "length_required"));
    if (const std::optional<std::string> why = encoded_body(req)) {
      res.set_header("Accept-Encoding", "identity");  // RFC 9110 15.5.16: the codings that would be accepted
      return refuse_and_close(api_error(415, "invalid_request_error", *why, "unsupported_content_encoding"));
    }
    // httplib reads a body up to its payload limit, the documents' larger
    // one, before a handler can look at its size: a body announced larger
    // than max_body_bytes on any other route is refused before a byte of
    // it is read. (httplib reads the length as strtoull does; so here.) A
    // document upload over the payload limit too: httplib would read and
    // drop all of it, however slowly it came, before answering 413.
    const std::optional<std::string> collection = upload_collection(req);  // one route match per request
    const std::uint64_t body_limit = collection ? payload_limit(s.config) : s.config.max_body_bytes;
    if (req.get_header_value<std::uint64_t>("Content-Length") > body_limit)
      return refuse_and_close(body_over_limit(body_limit));
    // Documents are ingested rag.max_concurrent_ingests at a time: each
    // holds its body, text and chunks in memory, runs a parser and embeds
    // on the compute threads. The place is taken before the body is read,
    // so that a refused upload (429) holds nothing either.
    if (collection) {
      // A key that may not write to the collection is refused first, and
      // takes no place (it would hold one for as long as its body took).
      if (std::optional<ApiError> e = s.upload_refusal(req, *collection)) return refuse_and_close(*e);
      // The handler reads the body through a ContentReader without the
      // multipart callbacks, which httplib would call (empty) for such a
      // body: 415 before it is read.
      if (req.is_multipart_form_data())
        return refuse_and_close(api_error(415, "invalid_request_error",
                                          "multipart/form-data is not taken: send a document's raw bytes with its own "
                                          "Content-Type and ?source=NAME (curl --data-binary @FILE), or JSON",
                                          "unsupported_media_type"));
      Impl::admitted_key().ingest = s.ingests.try_enter();
      if (!Impl::admitted_key().ingest) {
        Impl::admitted_key().linger = linger_for_upload(
            std::min(req.get_header_value<std::uint64_t>("Content-Length"), payload_limit(s.config)));
        s.metrics
            .counter("airlock_rag_documents_total", "Documents submitted for ingestion by result", "status=\"busy\"")
            .inc();
        return refuse_and_close(api_error(429, "rate_limit_error",
                                          std::to_string(s.ingests.limit()) +
                                              " documents are being ingested already (rag.max_concurrent_ingests); "
                                              "retry later",
                                          "too_many_ingests"));
      }
    } else if (const auto n = req.get_header_value<std::uint64_t>("Content-Length"); n > 0) {
      // A body is held whole and parsed into a tree of up to ~30 times its
      // size: without a bound on them together, clients sending large
      // bodies at once (each within max_body_bytes) could take all the
      // memory. Its size is taken before it is read (a client trickling
      // it in holds no more than that), room for the tree before it is
      // parsed (body_room()). Refused before the body is read, with the
      // linger of a refused upload (the client should read the 503 and
      // retry, as the SDKs do).
      Impl::admitted_key().body = s.bodies.try_enter(static_cast<std::int64_t>(n));
      if (!Impl::admitted_key().body) {
        Impl::admitted_key().linger = linger_for_upload(std::min<std::uint64_t>(n, s.config.max_body_bytes));
        return refuse_and_close(s.busy_with_bodies());
      }
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  h.set_error_handler([&s](const httplib::Request& req, httplib::Response& res) {
    // Statuses httplib sets itself (404 no route, 413 too large, 400 bad
    // request line) get the OpenAI envelope too.
    if (!res.body.empty()) return;
    ApiError e;
    const RequestStream* strm = RequestStream::current();
    const bool head_refused = strm && strm->refusal() != RequestStream::Refusal::kNone;
    // A header line RequestStream refused: httplib answers 400, said here as
    // what it was; the connection then ends (BoundedServer). Counted and
    // audited by the post-routing handler, which httplib calls before it
    // writes the answer, whether or not that can be written.
    if (head_refused) {
      res.status = head_refusal_status(*strm);
      res.set_header("Connection", "close");
      strm->mark_answered();
    }
    e.http_status = res.status;
    if (head_refused) e.message = head_refusal_message(*strm);
    else if (res.status == 404) e.message = "no route " + req.method + " " + req.path;
    else if (res.status == 413 && req.get_header_value("Content-Type").rfind("application/x-www-form-urlencoded", 0) == 0)
      e.message = "a body sent as a form (application/x-www-form-urlencoded, what curl -d sends) is limited to 8 KiB "
                  "by the HTTP library: send JSON with 'Content-Type: application/json'";
    else if (res.status == 413)  // only a document upload gets this far with a larger body
      e.message = "the request body is larger than " +
                  std::to_string(is_document_upload(req) ? payload_limit(s.config) : s.config.max_body_bytes) + " bytes";
    else e.message = "bad request";
    e.type = res.status >= 500 ? "server_error" : "invalid_request_error";
    res.set_content(error_body(e), "application/json");
  });
  h.set_exception_handler([&s](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    airlock::log().error("{} {}: {}", req.method, req.path, what);
    s.send_error(res, api_error(500, "server_error", "internal error"));
  });
  // Every answer but a stream's is counted and audited just before it is
  // written (httplib calls this for every answer it writes, its own errors
  // too), so that a client that has its answer finds it in /metrics and
  // the audit log. Streams are counted and audited when they end, 401s
  // when refused.
  h.set_post_routing_handler([&s](const httplib::Request& req, httplib::Response& res) {
    if (res.is_chunked_content_provider_ || res.status == 401) return;
    // A connection ended to free its thread as its head arrived (counted
    // in airlock_http_slow_heads_ended_total): no request was read.
    if (const RequestStream* strm = RequestStream::current(); strm != nullptr && strm->cut_off()) return;
    const bool own = Impl::admitted_key().request == &req;
    if (!own || !Impl::admitted_key().counted) s.count(req, res.status);
    // The completion routes audit themselves (with token counts); every
    // other request but an answered /health gets a row here, and so does
    // one that httplib or the pre-routing handler answered before any
    // handler ran (a body over the limit, a malformed one, 411, a /health
    // refused with 400 or 405).
    const bool audited = own && Impl::admitted_key().audited;
    if (!audited && (req.path != "/health" || res.status != 200))
      s.write_audit(s.key_of(req).value_or(""), req, nullptr, res.status);
  });
  // Runs once the answer is written, or failed to be.
  h.set_logger([&s](const httplib::Request& req, const httplib::Response&) {
    const bool own = Impl::admitted_key().request == &req;
    const bool unread = own && Impl::admitted_key().unread_bytes;
    const std::chrono::milliseconds linger = Impl::admitted_key().linger;
    if (Impl::admitted_key().handling) --s.handling;  // this thread's request, whichever it was
    // The next request on this thread (a new Request, maybe at this
    // address) is checked afresh, and read under the default policy.
    Impl::admitted_key() = {};
    waiting_for_tokens(false);
    // Only these refusals: ending the connection lingers. What the client sent
    // after the head is not a request (over TLS, part of it may already be
    // decrypted and waiting): the connection loop reads no more.
    if (unread) {
      if (const RequestStream* strm = RequestStream::current()) strm->mark_connection_ended();
      end_answers(req, linger);
    }
  });

  h.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("{\"status\":\"ok\"}", "application/json");
  });
  h.Get("/ready", [&s](const httplib::Request&, httplib::Response& res) {
    std::shared_ptr<LoadedModel> m = s.current();
    std::string why;
    if (s.draining) why = "shutting down";
    else if (!m) why = s.no_model();
    else {
      // "Recently": within 30 s. An idle server, or one whose last pass
      // failed, proves it with a one-token pass (so a transient failure
      // does not keep it unready until traffic that never comes).
      std::optional<Clock::time_point> last = m->scheduler->last_success();
      if (!m->scheduler->healthy() || !last || Clock::now() - *last > std::chrono::seconds(30)) {
        engine::GenerationRequest probe;
        probe.prompt = {m->tokenizer->bos() >= 0 ? m->tokenizer->bos() : 0};
        probe.max_tokens = 1;
        probe.sampling.temperature = 0;
        Result<std::shared_ptr<TokenStream>> ps = m->scheduler->submit(probe);
        if (!ps.is_ok()) why = "busy: " + ps.status().message();
        else {
          bool done = false;
          for (int i = 0; i < 100 && !done; ++i)
            for (TokenEvent& e : (*ps)->pop(std::chrono::milliseconds(100)))
              if (e.finish != FinishReason::kNone) {
                done = true;
                if (e.finish == FinishReason::kError) why = "forward pass failed: " + e.error.message();
              }
          if (!done) {
            (*ps)->cancel();
            why = "a one-token forward pass did not finish in 10 s";
          }
        }
      }
    }
    if (!why.empty()) {
      s.send_error(res, api_error(503, "server_error", "not ready: " + why));
      return;
    }
    ojson j = {{"status", "ready"}, {"model", m->id}, {"version", m->version}};
    res.set_content(j.dump(), "application/json");
  });
  h.Get("/metrics", [&s](const httplib::Request&, httplib::Response& res) {
    // No model (withdrawn: a revoked key, an expired bundle): nothing is
    // ready or running, whatever the last model said.
    const std::shared_ptr<LoadedModel> m = s.current();
    const engine::SchedulerStats st = m ? m->scheduler->stats() : engine::SchedulerStats{};
    s.metrics.gauge("airlock_requests_running", "Sequences in the running batch").set(st.running);
    s.metrics.gauge("airlock_requests_waiting", "Sequences waiting for admission").set(st.waiting);
    if (m) {
      s.metrics.gauge("airlock_kv_blocks_total", "KV cache blocks").set(st.kv_blocks_total);
      s.metrics.gauge("airlock_kv_blocks_used", "KV cache blocks in use").set(st.kv_blocks_used);
      s.metrics.gauge("airlock_kv_cache_usage_ratio", "KV cache blocks in use / total")
          .set(st.kv_blocks_total > 0 ? static_cast<double>(st.kv_blocks_used) / st.kv_blocks_total : 0);
      s.metrics.gauge("airlock_kv_blocks_cached", "KV blocks holding cached prefixes no request uses").set(st.kv_blocks_cached);
      // The scheduler's own totals (per loaded model; a reload starts them
      // again, so they are mirrored as gauges of the current model).
      s.metrics.gauge("airlock_prefix_cache_queries_tokens", "Prompt tokens looked up in the prefix cache (current model)")
          .set(static_cast<double>(st.prefix_query_tokens));
      s.metrics.gauge("airlock_prefix_cache_hits_tokens", "Prompt tokens found in the prefix cache (current model)")
          .set(static_cast<double>(st.prefix_hit_tokens));
      s.metrics.gauge("airlock_preemptions", "Requests sent back to wait (and recomputed) when KV blocks ran out (current model)")
          .set(static_cast<double>(st.preemptions));
    }
    s.metrics.gauge("airlock_model_ready", "1 when the last forward pass succeeded").set(m && m->scheduler->healthy() ? 1 : 0);
    s.metrics.gauge("airlock_rag_ingests_running", "Document uploads being read or ingested (rag.max_concurrent_ingests at most)")
        .set(static_cast<double>(s.ingests.used()));
    s.metrics.gauge("airlock_body_memory_bytes", "Of max_body_memory_mib, what request bodies in flight hold")
        .set(static_cast<double>(s.bodies.used()));
    res.set_content(s.metrics.render(), "text/plain; version=0.0.4");
  });
  // No model (withdrawn: a revoked or untrusted key, an expired bundle) is
  // the 503 every API route answers, naming why, not an empty list: an SDK
  // client would read that as "this server has no models" and never learn
  // the reason, and monitoring would see a 200.
  h.Get("/v1/models", [&s](const httplib::Request&, httplib::Response& res) {
    std::shared_ptr<LoadedModel> m = s.current();
    if (!m) {
      s.send_error(res, api_error(503, "server_error", s.no_model()));
      return;
    }
    ojson data = ojson::array();
    const engine::ModelParams& p = m->model->params();
    data.push_back({{"id", m->id},
                    {"object", "model"},
                    {"created", m->created},
                    {"owned_by", "airlock"},
                    {"airlock",
                     {{"bundle_version", m->version},
                      {"manifest_sha256", m->manifest_sha256},
                      {"signed_by", m->key_id},
                      {"architecture", p.arch},
                      {"parameters", m->model->n_params()},      // held by each rank
                      {"weight_bytes", m->model->weight_bytes()},  // on each rank's device
                      {"tensor_parallel", m->n_ranks},
                      {"context_length", m->scheduler->max_context()},
                      {"kv_blocks", m->scheduler->stats().kv_blocks_total},
                      {"max_running", m->scheduler->options().max_running},
                      {"tool_calls", tool_format_name(m->tool_format)},
                      {"reasoning", reasoning_format_name(m->reasoning)},
                      // What /v1/embeddings and /v1/rerank have to work with.
                      {"embedding", m->embedder ? ojson{{"kind", std::string(m->embedder->kind())}, {"dimensions", m->embedder->dim()}}
                                                : ojson()},
                      {"reranker", m->reranker ? ojson{{"context_length", m->reranker->context_length()},
                                                   {"kind", m->reranker->reranker_kind()}}
                                             : ojson()}}}});
    res.set_content(ojson({{"object", "list"}, {"data", data}}).dump(), "application/json");
  });
  h.Get(R"(/v1/models/(.+))", [&s](const httplib::Request& req, httplib::Response& res) {
    std::shared_ptr<LoadedModel> m = s.current();
    if (!m) {
      s.send_error(res, api_error(503, "server_error", s.no_model()));
      return;
    }
    if (req.matches[1] != m->id) {
      s.send_error(res, api_error(404, "invalid_request_error", "the model does not exist", "model_not_found"));
      return;
    }
    res.set_content(ojson({{"id", m->id}, {"object", "model"}, {"created", m->created}, {"owned_by", "airlock"}}).dump(),
                    "application/json");
  });
  h.Post("/v1/chat/completions", [&s](const httplib::Request& req, httplib::Response& res) {
    s.completions(req, res, Endpoint::kChat);
  });
  h.Post("/v1/completions", [&s](const httplib::Request& req, httplib::Response& res) {
    s.completions(req, res, Endpoint::kCompletions);
  });
  h.Post("/v1/responses", [&s](const httplib::Request& req, httplib::Response& res) {
    s.completions(req, res, Endpoint::kResponses);
  });
  h.Post("/v1/rag/query", [&s](const httplib::Request& req, httplib::Response& res) {
    s.completions(req, res, Endpoint::kChat, /*rag_query=*/true);
  });
  s.rag_routes();
  // Tokens one /v1/embeddings request may embed, after each input is cut
  // to the model's input length (docs/daemon.md).
  static constexpr std::size_t kMaxEmbeddingTokens = 65536;
  h.Post("/v1/embeddings", [&s](const httplib::Request& req, httplib::Response& res) {
    std::shared_ptr<LoadedModel> m = s.model_for(req, res);
    if (!m) return;
    EmbeddingRequest r;
    if (auto e = parse_embedding_request(req.body, &r)) return s.send_error(res, *e);
    if (r.model != m->id)
      return s.send_error(res, unknown_model(r.model));
    if (!m->embedder)
      return s.send_error(res, api_error(404, "invalid_request_error",
                                         "the bundle '" + m->id + "' has no embedding model", "model_not_found"));
    if (r.dimensions && *r.dimensions != m->embedder->dim()) {
      ApiError e = api_error(400, "invalid_request_error",
                             "this model gives " + std::to_string(m->embedder->dim()) + " dimensions");
      e.param = "dimensions";
      return s.send_error(res, e);
    }
    // The work is bounded by tokens, not only by inputs and bytes: 2,048
    // inputs of 512 tokens each held the shared compute threads for minutes.
    std::vector<std::size_t> n_tokens(r.inputs.size());
    std::size_t n_embedded = 0;  // after each input is cut to what the model takes
    for (std::size_t i = 0; i < r.inputs.size(); ++i) {
      n_tokens[i] = m->embedder->count_tokens(r.inputs[i]);
      n_embedded += std::min(n_tokens[i], m->embedder->max_tokens());
    }
    if (n_embedded > kMaxEmbeddingTokens) {
      ApiError e = api_error(400, "invalid_request_error",
                             "the inputs hold " + std::to_string(n_embedded) + " tokens (each cut to the model's " +
                                 std::to_string(m->embedder->max_tokens()) + "); at most " +
                                 std::to_string(kMaxEmbeddingTokens) + " per request");
      e.param = "input";
      return s.send_error(res, e);
    }
    ojson data = ojson::array();
    std::int64_t tokens = 0;
    for (std::size_t i = 0; i < r.inputs.size(); ++i) {
      const std::vector<float> v = m->embedder->embed(r.inputs[i]);
      // The embedder answers a failure with no vector (never seen: a 500
      // rather than a 200 with an empty or broken embedding).
      if (v.size() != static_cast<std::size_t>(m->embedder->dim()) ||
          !std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); }))
        return s.send_error(res, api_error(500, "server_error",
                                           "the embedding model failed on input " + std::to_string(i)));
      tokens += static_cast<std::int64_t>(std::min(n_tokens[i], m->embedder->max_tokens()));  // what was embedded
      ojson item = {{"object", "embedding"}, {"index", i}};
      if (r.base64) {
        // Little-endian float32 bytes, as OpenAI's encoding_format=base64.
        std::string b64(sodium_base64_encoded_len(v.size() * sizeof(float), sodium_base64_VARIANT_ORIGINAL), '\0');
        sodium_bin2base64(b64.data(), b64.size(), reinterpret_cast<const unsigned char*>(v.data()), v.size() * sizeof(float),
                          sodium_base64_VARIANT_ORIGINAL);
        b64.resize(std::strlen(b64.c_str()));
        item["embedding"] = b64;
      } else {
        item["embedding"] = v;
      }
      data.push_back(std::move(item));
    }
    ojson out = {{"object", "list"}, {"data", std::move(data)}, {"model", m->id},
                 {"usage", {{"prompt_tokens", tokens}, {"total_tokens", tokens}}}};
    res.set_content(out.dump(), "application/json");
  });
  // vLLM's token counting routes: what a prompt or a conversation costs
  // in this model's tokens, exactly as the completion routes count it.
  h.Post("/tokenize", [&s](const httplib::Request& req, httplib::Response& res) {
    std::shared_ptr<LoadedModel> m = s.model_for(req, res);
    if (!m) return;
    TokenizeRequest r;
    if (auto e = parse_tokenize_request(req.body, &r)) return s.send_error(res, *e);
    if (r.model && *r.model != m->id)
      return s.send_error(res, unknown_model(*r.model));
    const engine::Tokenizer& tok = *m->tokenizer;
    std::vector<std::int32_t> ids;
    if (r.prompt) {
      ids = tok.encode(*r.prompt, r.add_special_tokens, /*parse_special=*/true);
    } else {
      if (auto e = s.check_template_inputs(*m, r.chat)) return s.send_error(res, *e);
      Result<std::vector<std::int32_t>> p = s.prompt_tokens_of(*m, r.chat, nullptr, r.add_generation_prompt);
      if (!p.is_ok()) {
        ApiError e = api_error(400, "invalid_request_error", p.status().message());
        e.param = "messages";
        return s.send_error(res, e);
      }
      ids = std::move(*p);
    }
    ojson out = {{"count", ids.size()}, {"max_model_len", m->scheduler->max_context()}, {"tokens", ids}};
    if (r.return_token_strs) {
      // Each token's text (a control token's name); a piece of a UTF-8
      // character shows as U+FFFD.
      ojson strs = ojson::array();
      for (std::int32_t id : ids) strs.push_back(tok.token_bytes(id, /*render_special=*/true));
      out["token_strs"] = std::move(strs);
    }
    res.set_content(out.dump(-1, ' ', false, ojson::error_handler_t::replace), "application/json");
  });
  h.Post("/detokenize", [&s](const httplib::Request& req, httplib::Response& res) {
    std::shared_ptr<LoadedModel> m = s.model_for(req, res);
    if (!m) return;
    DetokenizeRequest r;
    if (auto e = parse_detokenize_request(req.body, &r)) return s.send_error(res, *e);
    if (r.model && *r.model != m->id)
      return s.send_error(res, unknown_model(*r.model));
    const engine::Tokenizer& tok = *m->tokenizer;
    for (std::size_t i = 0; i < r.tokens.size(); ++i)
      if (r.tokens[i] < 0 || r.tokens[i] >= tok.n_vocab()) {
        ApiError e = api_error(400, "invalid_request_error",
                               "tokens[" + std::to_string(i) + "] (" + std::to_string(r.tokens[i]) +
                                   ") is not a token id of this model (0.." + std::to_string(tok.n_vocab() - 1) + ")");
        e.param = "tokens";
        return s.send_error(res, e);
      }
    // As a generated answer decodes (whole UTF-8 characters; the
    // SentencePiece leading space dropped), control tokens by name unless
    // skip_special_tokens.
    engine::StreamDecoder decoder(tok);
    std::string text;
    for (std::int64_t t : r.tokens) {
      const std::int32_t id = static_cast<std::int32_t>(t);
      const std::string shown = tok.token_bytes(id, /*render_special=*/true);
      if (tok.token_bytes(id, false).empty() && !shown.empty()) {
        if (r.skip_special_tokens) continue;
        text += decoder.finish();
        text += shown;
        continue;
      }
      text += decoder.push(id);
    }
    text += decoder.finish();
    res.set_content(ojson({{"prompt", text}}).dump(-1, ' ', false, ojson::error_handler_t::replace), "application/json");
  });
  h.Post("/v1/rerank", [&s](const httplib::Request& req, httplib::Response& res) {
    std::shared_ptr<LoadedModel> m = s.model_for(req, res);
    if (!m) return;
    RerankRequest r;
    if (auto e = parse_rerank_request(req.body, &r)) return s.send_error(res, *e);
    if (r.model && *r.model != m->id)
      return s.send_error(res, unknown_model(*r.model));
    if (!m->reranker)
      return s.send_error(res, api_error(404, "invalid_request_error", "the bundle '" + m->id + "' has no reranker",
                                         "model_not_found"));
    std::vector<double> relevance;
    std::size_t tokens = 0;
    if (auto e = s.rerank(*m, r.query, r.documents, Impl::kMaxRerankTokens, "documents", &relevance, &tokens))
      return s.send_error(res, *e);
    std::vector<std::size_t> order(relevance.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return relevance[a] > relevance[b]; });
    order.resize(std::min(order.size(), r.top_n.value_or(order.size())));
    ojson results = ojson::array();
    for (std::size_t i : order) {
      ojson item = {{"index", i}, {"relevance_score", relevance[i]}};
      if (r.return_documents) item["document"] = {{"text", r.documents[i]}};
      results.push_back(std::move(item));
    }
    ojson out = {{"id", random_id("rerank-")}, {"object", "list"}, {"model", m->id}, {"results", std::move(results)},
                 {"usage", {{"prompt_tokens", tokens}, {"total_tokens", tokens}}}};
    res.set_content(out.dump(-1, ' ', false, ojson::error_handler_t::replace), "application/json");
  });
}

namespace {

ojson collection_json(const rag::CollectionInfo& c) {
  return {{"object", "rag.collection"}, {"name", c.name}, {"owner", c.owner}, {"description", c.description},
          {"readers", c.readers}, {"created_at", c.created_at}, {"documents", c.n_documents}, {"chunks", c.n_chunks}};
}

ojson document_json(const rag::DocumentInfo& d) {
  ojson meta = ojson::parse(d.metadata_json, nullptr, false);
  return {{"object", "rag.document"}, {"id", d.id}, {"collection", d.collection}, {"source", d.source},
          {"title", d.title}, {"format", d.format}, {"sha256", d.content_hash}, {"bytes", d.n_bytes},
          {"chunks", d.n_chunks}, {"owner", d.owner}, {"ingested_at", d.ingested_at},
          {"metadata", meta.is_discarded() ? ojson::object() : meta}};
}

const char* outcome_name(rag::PutOutcome o) {
  switch (o) {
    case rag::PutOutcome::kAdded: return "added";
    case rag::PutOutcome::kReplaced: return "replaced";
    case rag::PutOutcome::kUnchanged: return "unchanged";
    case rag::PutOutcome::kDuplicate: return "duplicate";
  }
  return "?";
}

}  // namespace

// Collections and documents: POST/GET /v1/rag/collections, GET/DELETE
// /v1/rag/collections/NAME, POST/GET /v1/rag/collections/NAME/documents,
// DELETE /v1/rag/collections/NAME/documents/SOURCE.
void Server::Impl::rag_routes() {
  httplib::Server& h = http;
  // The store of the current model, or the 503 that says why there is none.
  auto store_or_fail = [this](httplib::Response& res) -> std::shared_ptr<LoadedModel> {
    std::shared_ptr<LoadedModel> m = current();
    if (draining) send_error(res, api_error(503, "server_error", "the server is shutting down"));
    else if (!m) send_error(res, api_error(503, "server_error", no_model()));
    else if (!m->rag_store)
      send_error(res, api_error(503, "server_error", "RAG is off: " + m->rag_off_reason, "rag_unavailable"));
    else return m;
    return nullptr;
  };
  auto who = [this](const httplib::Request& req) { return principal_of(key_of(req).value_or("")); };

  h.Post("/v1/rag/collections", [this, store_or_fail, who](const httplib::Request& req, httplib::Response& res) {
    if (body_refused(req, res)) return;
    std::shared_ptr<LoadedModel> m = store_or_fail(res);
    if (!m) return;
    ojson j;
    if (auto e = parse_json_object(req.body, &j)) return send_error(res, *e);
    for (const auto& [k, v] : j.items())
      if (k != "name" && k != "readers" && k != "description")
        return send_error(res, api_error(400, "invalid_request_error", "unknown field '" + k + "' (name, readers, description)"));
    if (!j.contains("name") || !j["name"].is_string())
      return send_error(res, api_error(400, "invalid_request_error", "name must be a string"));
    std::vector<std::string> readers;
    if (j.contains("readers")) {
      if (!j["readers"].is_array() || j["readers"].size() > 256)
        return send_error(res, api_error(400, "invalid_request_error", "readers must be an array of key:NAME, group:NAME or *"));
      for (const ojson& r : j["readers"]) {
        if (!r.is_string()) return send_error(res, api_error(400, "invalid_request_error", "readers must hold strings"));
        readers.push_back(r.get<std::string>());
      }
    }
    std::string description;
    if (j.contains("description")) {
      if (!j["description"].is_string()) return send_error(res, api_error(400, "invalid_request_error", "description must be a string"));
      description = j["description"].get<std::string>();
    }
    Result<rag::CollectionInfo> c = m->rag_store->create_collection(j["name"].get<std::string>(), who(req), readers, description);
    if (!c.is_ok()) return send_error(res, status_error(c.status()));
    res.status = 201;
    res.set_content(collection_json(*c).dump(), "application/json");
  });
  h.Get("/v1/rag/collections", [this, store_or_fail, who](const httplib::Request& req, httplib::Response& res) {
    std::shared_ptr<LoadedModel> m = store_or_fail(res);
    if (!m) return;
    Result<std::vector<rag::CollectionInfo>> all = m->rag_store->list_collections(who(req));
    if (!all.is_ok()) return send_error(res, status_error(all.status()));
    ojson data = ojson::array();
    for (const rag::CollectionInfo& c : *all) data.push_back(collection_json(c));
    res.set_content(ojson({{"object", "list"}, {"data", data}}).dump(), "application/json");
  });
  h.Get(R"(/v1/rag/collections/([^/]+))", [this, store_or_fail, who](const httplib::Request& req, httplib::Response& res) {
    std::shared_ptr<LoadedModel> m = store_or_fail(res);
    if (!m) return;
    Result<rag::CollectionInfo> c = m->rag_store->get_collection(req.matches[1], who(req));
    if (!c.is_ok()) return send_error(res, status_error(c.status()));
    res.set_content(collection_json(*c).dump(), "application/json");
  });
  h.Delete(R"(/v1/rag/collections/([^/]+))", [this, store_or_fail, who](const httplib::Request& req, httplib::Response& res) {
    std::shared_ptr<LoadedModel> m = store_or_fail(res);
    if (!m) return;
    if (Status st = m->rag_store->delete_collection(req.matches[1], who(req)); !st.is_ok())
      return send_error(res, status_error(st));
    res.set_content(ojson({{"object", "rag.collection.deleted"}, {"name", req.matches[1]}, {"deleted", true}}).dump(),
                    "application/json");
  });
  h.Post(kDocumentsRoute, [this, store_or_fail, who](const httplib::Request& req, httplib::Response& res,
                                                     const httplib::ContentReader& read_body) {
    // Once the body is read, the place among the ingests is given back when
    // this returns (after the body and text are freed: declared first),
    // before the answer is written, so that a client that sends its next
    // document once it has this answer finds it free (the logger, which
    // gives it back otherwise, runs after the write).
    struct GiveBackIngest {
      bool armed = false;
      ~GiveBackIngest() {
        if (armed) admitted_key().ingest.release();
      }
    } give_back_ingest;
    std::string body;
    if (!read_upload(req, res, read_body, &body)) return;
    give_back_ingest.armed = true;
    std::shared_ptr<LoadedModel> m = store_or_fail(res);
    if (!m) return;
    // JSON {source, content | content_base64, metadata}, or the raw file
    // with ?source=NAME (any other content type).
    std::string source, bytes, metadata;  // metadata "" when not given: kept for unchanged bytes
    const std::string type = req.get_header_value("Content-Type");
    if (type.rfind("application/json", 0) == 0) {
      // Up to tens of MiB, outside max_body_memory_mib: its JSON tree is
      // held to a few thousand values (the content is one string, the
      // metadata a small object), whatever the body's size.
      ojson j;
      if (auto e = parse_json_object(body, &j, kMaxDocumentJsonValues)) return send_error(res, *e);
      for (const auto& [k, v] : j.items())
        if (k != "source" && k != "content" && k != "content_base64" && k != "metadata")
          return send_error(res, api_error(400, "invalid_request_error",
                                           "unknown field '" + k + "' (source, content, content_base64, metadata)"));
      if (!j.contains("source") || !j["source"].is_string())
        return send_error(res, api_error(400, "invalid_request_error", "source must be a string (the document's name)"));
      source = j["source"].get<std::string>();
      if (j.contains("content") == j.contains("content_base64"))
        return send_error(res, api_error(400, "invalid_request_error", "give content (text) or content_base64 (a file)"));
      if (j.contains("content")) {
        if (!j["content"].is_string()) return send_error(res, api_error(400, "invalid_request_error", "content must be a string"));
        bytes = j["content"].get<std::string>();
      } else {
        if (!j["content_base64"].is_string())
          return send_error(res, api_error(400, "invalid_request_error", "content_base64 must be a string"));
        const std::string& b64 = j["content_base64"].get_ref<const std::string&>();
        bytes.resize(b64.size() / 4 * 3 + 3);
        std::size_t n = 0;
        if (sodium_base642bin(reinterpret_cast<unsigned char*>(bytes.data()), bytes.size(), b64.data(), b64.size(),
                              nullptr, &n, nullptr, sodium_base64_VARIANT_ORIGINAL) != 0)
          return send_error(res, api_error(400, "invalid_request_error", "content_base64 is not valid base64"));
        bytes.resize(n);
      }
      if (j.contains("metadata")) {
        if (!j["metadata"].is_object()) return send_error(res, api_error(400, "invalid_request_error", "metadata must be an object"));
        metadata = j["metadata"].dump();
      }
    } else if (type.rfind("application/x-www-form-urlencoded", 0) == 0) {
      // (curl -d): the HTTP library reads such a body as form fields, so
      // its bytes could name the document.
      return send_error(res, api_error(415, "invalid_request_error",
                                       "send a document's raw bytes with its own Content-Type (curl --data-binary "
                                       "@FILE -H 'Content-Type: application/pdf'), or JSON, not as a form "
                                       "(application/x-www-form-urlencoded)"));
    } else {
      source = req.get_param_value("source");
      if (source.empty())
        return send_error(res, api_error(400, "invalid_request_error", "a raw upload needs ?source=NAME (or send JSON)"));
      bytes = std::move(body);
    }
    if (bytes.size() > config.rag.max_document_bytes)
      return send_error(res, api_error(413, "invalid_request_error",
                                       "the document is larger than rag.max_document_bytes (" +
                                           std::to_string(config.rag.max_document_bytes) + ")",
                                       "document_too_large"));
    rag::IngestOptions o;
    // A chunk longer than the embedding model takes would be cut before it
    // is embedded: its tail stored, and citable, but never searched by
    // meaning. The document prefix goes in front of every chunk.
    o.chunk.max_tokens = static_cast<std::size_t>(config.rag.chunk_tokens);
    if (m->embedder) {
      const std::size_t prefix = m->embedder->count_tokens(config.rag.document_prefix), room = m->embedder->max_tokens();
      o.chunk.max_tokens = std::min(o.chunk.max_tokens, room > prefix + 1 ? room - prefix : std::size_t{1});
    }
    o.chunk.overlap_tokens = static_cast<std::size_t>(config.rag.chunk_overlap);
    if (o.chunk.overlap_tokens >= o.chunk.max_tokens) o.chunk.overlap_tokens = o.chunk.max_tokens / 8;
    o.limits.max_input_bytes = config.rag.max_document_bytes;
    o.limits.pdf_timeout_ms = config.rag.pdf_timeout_ms;
    o.limits.pdf_memory_bytes = config.rag.pdf_memory_mib << 20;
    const std::string collection = req.matches[1];
    Result<rag::IngestResult> r =
        rag::ingest_document(*m->rag_store, *m->rag_embedder, collection, source, bytes, metadata, who(req), o);
    auto count_document = [&](const char* status) {
      metrics.counter("airlock_rag_documents_total", "Documents submitted for ingestion by result",
                      std::string("status=\"") + status + "\"")
          .inc();
    };
    if (!r.is_ok()) {
      count_document("refused");
      return send_error(res, ingest_refusal(r.status(), source));
    }
    count_document(outcome_name(r->put.outcome));
    const bool written = r->put.outcome == rag::PutOutcome::kAdded || r->put.outcome == rag::PutOutcome::kReplaced;
    res.status = written ? 201 : 200;
    ojson out = {{"object", "rag.document"},
                 {"collection", collection},
                 {"source", source},
                 {"id", r->put.document_id},
                 {"status", outcome_name(r->put.outcome)},
                 {"duplicate_of", r->put.duplicate_of.empty() ? ojson() : ojson(r->put.duplicate_of)},
                 {"format", r->format},
                 {"title", r->title},
                 {"chunks", r->n_chunks},
                 {"tokens", r->n_tokens}};
    res.set_content(out.dump(-1, ' ', false, ojson::error_handler_t::replace), "application/json");
  });
  h.Get(R"(/v1/rag/collections/([^/]+)/documents)", [this, store_or_fail, who](const httplib::Request& req,
                                                                                 httplib::Response& res) {
    std::shared_ptr<LoadedModel> m = store_or_fail(res);
    if (!m) return;
    Result<std::vector<rag::DocumentInfo>> docs = m->rag_store->list_documents(req.matches[1], who(req));
    if (!docs.is_ok()) return send_error(res, status_error(docs.status()));
    ojson data = ojson::array();
    for (const rag::DocumentInfo& d : *docs) data.push_back(document_json(d));
    res.set_content(ojson({{"object", "list"}, {"data", data}}).dump(-1, ' ', false, ojson::error_handler_t::replace),
                    "application/json");
  });
  h.Delete(R"(/v1/rag/collections/([^/]+)/documents/(.+))", [this, store_or_fail, who](const httplib::Request& req,
                                                                                         httplib::Response& res) {
    std::shared_ptr<LoadedModel> m = store_or_fail(res);
    if (!m) return;
    if (Status st = m->rag_store->delete_document(req.matches[1], req.matches[2], who(req)); !st.is_ok())
      return send_error(res, status_error(st));
    res.set_content(ojson({{"object", "rag.document.deleted"}, {"source", req.matches[2]}, {"deleted", true}})
                        .dump(-1, ' ', false, ojson::error_handler_t::replace),
                    "application/json");
  });
}

}  // namespace airlock::daemon
