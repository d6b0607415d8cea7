// End to end: the real `airlock` CLI makes keys and a signed bundle of the
// small real model, imports it, creates an API key; the real `airlockd`
// serves it on 127.0.0.1 with an ephemeral port, and these tests drive it
// over HTTP.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fcntl.h>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <sodium.h>
#include <nlohmann/json.hpp>
#include <thread>

#include "test_bundles.h"

extern char** environ;

namespace airlock {
namespace {

using json = nlohmann::json;
using testing::TempDir;

int run(std::vector<std::string> argv, std::string* out = nullptr);
int run_tool(std::vector<std::string> argv) { return run(std::move(argv)); }

std::string models_dir() {
  const char* d = std::getenv("AIRLOCK_MODELS_DIR");
  return d ? d : "";
}
std::string stories_path() { return models_dir() + "/stories260K.gguf"; }
bool have_stories() { return !models_dir().empty() && testing::exists(stories_path()); }

std::string embedder_dir() { return models_dir() + "/embeddings/model2vec-rs-fixtures/test-model-float32"; }
bool have_embedder() { return !models_dir().empty() && testing::exists(embedder_dir() + "/model.safetensors"); }

// The served model: stories260K where ../shared/models has it, otherwise a
// small random model made by airlock-gen-model (its text is random, so the
// tests that compare against stories260K's known output skip).
std::string model_path() {
  if (have_stories()) return stories_path();
  static TempDir* dir = new TempDir();  // lives for the whole test process
  const std::string path = *dir / "generated.gguf";
  if (!testing::exists(path)) {
    EXPECT_EQ(run_tool({AIRLOCK_GEN_MODEL_PATH, path}), 0);
  }
  return path;
}

int run(std::vector<std::string> argv, std::string* out) {
  TempDir io;
  const std::string out_path = io / "out";
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> cargv;
  for (std::string& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawnp(&pid, cargv[0], &fa, nullptr, cargv.data(), environ) != 0) return -1;
  posix_spawn_file_actions_destroy(&fa);
  int status = 0;
  waitpid(pid, &status, 0);
  if (out) *out = testing::read_file(out_path);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A store with one imported bundle, trusted keys and an API key.
struct Enclave {
  TempDir dir;
  std::string api_key;

  Enclave() {
    EXPECT_EQ(run({AIRLOCK_CLI_PATH, "bundle", "keygen", "--out", dir / "signer", "--unencrypted"}), 0);
    ::mkdir((dir / "trusted").c_str(), 0750);
    testing::write_file(dir / "trusted/signer.pub", testing::read_file(dir / "signer.pub"));
    EXPECT_EQ(make_bundle(1), 0);
    EXPECT_EQ(import(1), 0);
    std::string out;
    EXPECT_EQ(run({AIRLOCK_CLI_PATH, "keys", "create", "--name", "tester", "--state", dir / "state"}, &out), 0);
    api_key = out.substr(0, out.find_last_not_of("\n") + 1);
  }
  int make_bundle(int version) {
    std::vector<std::string> argv = {AIRLOCK_CLI_PATH, "bundle", "create", "--key", dir / "signer.key", "--name", "stories",
                                     "--version", std::to_string(version), "--llm", model_path(), "--out",
                                     dir / ("stories-" + std::to_string(version) + ".airlock"), "--quiet"};
    if (have_embedder()) {  // the model2vec fixture as the bundle's embedding model
      argv.push_back("--embedding");
      argv.push_back(embedder_dir());
    }
    return run(argv);
  }
  int import(int version) {
    return run({AIRLOCK_CLI_PATH, "bundle", "import", dir / ("stories-" + std::to_string(version) + ".airlock"),
                "--store", dir / "store", "--trusted", dir / "trusted", "--quiet"});
  }
};

// A running airlockd; stopped with SIGTERM (and checked to exit 0).
struct Daemon {
  pid_t pid = -1;
  int port = 0;
  std::string log_path;
  std::string api_key;

  static std::unique_ptr<Daemon> start(const Enclave& e, const std::string& extra_config = "") {
    auto d = std::make_unique<Daemon>();
    d->api_key = e.api_key;
    static int n = 0;
    const std::string tag = std::to_string(::getpid()) + "-" + std::to_string(n++);
    const std::string cfg = e.dir / ("airlockd-" + tag + ".toml");
    testing::write_file(cfg, "listen = \"127.0.0.1:0\"\nstore = \"" + e.dir / "store" + "\"\ntrusted = \"" +
                                 e.dir / "trusted" + "\"\nstate = \"" + e.dir / "state" + "\"\nkv_cache_mib = 64\n" +
                                 "threads = 2\n" + extra_config);
    d->log_path = e.dir / ("airlockd-" + tag + ".log");
    const std::string out_path = e.dir / ("airlockd-" + tag + ".out");
    std::vector<std::string> argv = {AIRLOCKD_PATH, "--config", cfg};
    std::vector<char*> cargv;
    for (std::string& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    // fork + exec rather than posix_spawn, to ask for SIGKILL when this test
    // process dies: a test killed by a timeout must not leave a daemon behind.
    const pid_t parent = ::getpid();
    d->pid = ::fork();
    if (d->pid < 0) return nullptr;
    if (d->pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      const int in = ::open("/dev/null", O_RDONLY);
      const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int err = ::open(d->log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (in < 0 || out < 0 || err < 0) ::_exit(127);
      ::dup2(in, 0);
      ::dup2(out, 1);
      ::dup2(err, 2);
      ::execve(cargv[0], cargv.data(), environ);
      ::_exit(127);
    }
    for (int i = 0; i < 600; ++i) {
      const std::string out = testing::read_file(out_path);
      const std::size_t at = out.find("listening on 127.0.0.1:");
      if (at != std::string::npos && out.find('\n', at) != std::string::npos) {
        d->port = std::stoi(out.substr(at + 23));
        return d;
      }
      int status = 0;
      if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
        d->pid = -1;
        return d;  // exited: port stays 0, the log says why
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return d;
  }
  std::string log() const { return testing::read_file(log_path); }
  int stop() {
    if (pid <= 0) return -1;
    ::kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  ~Daemon() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  httplib::Client client(bool with_key = true) const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120, 0);
    if (with_key) c.set_default_headers({{"Authorization", "Bearer " + api_key}});
    return c;
  }
  httplib::Result post(const std::string& path, const json& body) const {
    return client().Post(path, body.dump(), "application/json");
  }
};

json chat(const std::string& user, int max_tokens, bool stream = false) {
  return {{"model", "stories"},
          {"messages", json::array({{{"role", "user"}, {"content", user}}})},
          {"max_tokens", max_tokens},
          {"temperature", 0},
          {"stream", stream}};
}

// The `data:` payloads of an SSE body, in order.
std::vector<std::string> sse_events(const std::string& body) {
  std::vector<std::string> out;
  std::size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const std::size_t end = body.find("\n\n", at);
    out.push_back(body.substr(at + 6, end - at - 6));
    at = end == std::string::npos ? body.size() : end + 2;
  }
  return out;
}

class DaemonE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    enclave_ = new Enclave();
    daemon_ = Daemon::start(*enclave_).release();
  }
  static void TearDownTestSuite() {
    if (daemon_) {
      EXPECT_EQ(daemon_->stop(), 0) << daemon_->log();
    }
    delete daemon_;
    delete enclave_;
    daemon_ = nullptr;
    enclave_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(daemon_, nullptr);
    ASSERT_GT(daemon_->port, 0) << daemon_->log();
  }
  static Enclave* enclave_;
  static Daemon* daemon_;
};
Enclave* DaemonE2E::enclave_ = nullptr;
Daemon* DaemonE2E::daemon_ = nullptr;

TEST_F(DaemonE2E, HealthIsOpenEverythingElseNeedsAKey) {
  httplib::Client anon = daemon_->client(false);
  auto h = anon.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  for (const char* path : {"/ready", "/metrics", "/v1/models"}) {
    auto r = anon.Get(path);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401) << path;
    json e = json::parse(r->body);
    EXPECT_EQ(e["error"]["code"], "invalid_api_key");
    EXPECT_TRUE(e["error"].contains("message") && e["error"].contains("type") && e["error"].contains("param"));
  }
  auto p = anon.Post("/v1/chat/completions", chat("hi", 2).dump(), "application/json");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->status, 401);
  httplib::Client wrong("127.0.0.1", daemon_->port);
  wrong.set_default_headers({{"Authorization", "Bearer " + daemon_->api_key + "x"}});
  EXPECT_EQ(wrong.Get("/v1/models")->status, 401);
  wrong.set_default_headers({{"Authorization", "Basic " + daemon_->api_key}});
  EXPECT_EQ(wrong.Get("/v1/models")->status, 401);
}

TEST_F(DaemonE2E, ModelsAndReady) {
  auto r = daemon_->client().Get("/v1/models");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["id"], "stories");
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_EQ(j["data"][0]["airlock"]["bundle_version"], 1);
  EXPECT_GT(j["data"][0]["airlock"]["kv_blocks"].get<int>(), 0);
  auto ready = daemon_->client().Get("/ready");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200) << ready->body;
}

TEST_F(DaemonE2E, CompletionFromBosReproducesTheReferenceStory) {
  if (!have_stories()) GTEST_SKIP() << "stories260K.gguf not found (AIRLOCK_MODELS_DIR): the reference text is its own";
  // models/README.md: greedy generation from BOS gives stories260K.expected.txt.
  const std::string expected = testing::read_file(models_dir() + "/stories260K.expected.txt");
  ASSERT_FALSE(expected.empty());
  auto r = daemon_->post("/v1/completions", {{"model", "stories"}, {"prompt", ""}, {"max_tokens", 60}, {"temperature", 0}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "text_completion");
  const std::string text = j["choices"][0]["text"];
  ASSERT_GT(text.size(), 20u);
  EXPECT_EQ(expected.substr(0, text.size()), text);
  EXPECT_EQ(j["usage"]["completion_tokens"], 60);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
}

TEST_F(DaemonE2E, ChatStreamedEqualsChatWhole) {
  auto whole = daemon_->post("/v1/chat/completions", chat("Tell me about a cat.", 40));
  ASSERT_TRUE(whole);
  ASSERT_EQ(whole->status, 200) << whole->body;
  json w = json::parse(whole->body);
  EXPECT_EQ(w["object"], "chat.completion");
  EXPECT_EQ(w["choices"][0]["message"]["role"], "assistant");
  const std::string content = w["choices"][0]["message"]["content"];
  EXPECT_FALSE(content.empty());
  EXPECT_EQ(w["usage"]["completion_tokens"].get<int>() + w["usage"]["prompt_tokens"].get<int>(),
            w["usage"]["total_tokens"].get<int>());

  json body = chat("Tell me about a cat.", 40, true);
  body["stream_options"] = {{"include_usage", true}};
  auto s = daemon_->post("/v1/chat/completions", body);
  ASSERT_TRUE(s);
  ASSERT_EQ(s->status, 200);
  EXPECT_NE(s->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  std::vector<std::string> events = sse_events(s->body);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back(), "[DONE]");
  json first = json::parse(events[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string streamed;
  std::string finish;
  for (std::size_t i = 0; i + 2 < events.size(); ++i) {
    json c = json::parse(events[i]);
    EXPECT_TRUE(c["usage"].is_null());
    const json& d = c["choices"][0]["delta"];
    if (d.contains("content")) streamed += d["content"].get<std::string>();
    if (!c["choices"][0]["finish_reason"].is_null()) finish = c["choices"][0]["finish_reason"];
  }
  json usage = json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"], w["usage"]);
  EXPECT_EQ(streamed, content);
  EXPECT_EQ(finish, w["choices"][0]["finish_reason"]);
}

TEST_F(DaemonE2E, StopStringsNAndLogprobs) {
  auto base = daemon_->post("/v1/completions", {{"model", "stories"}, {"prompt", "Once upon a time"}, {"max_tokens", 40}, {"temperature", 0}});
  ASSERT_TRUE(base);
  ASSERT_EQ(base->status, 200);
  const std::string text = json::parse(base->body)["choices"][0]["text"];
  ASSERT_GT(text.size(), 12u);
  const std::string stop = text.substr(8, 4);
  auto cut = daemon_->post("/v1/completions", {{"model", "stories"}, {"prompt", "Once upon a time"}, {"max_tokens", 40},
                                                {"temperature", 0}, {"stop", stop}});
  ASSERT_TRUE(cut);
  json c = json::parse(cut->body);
  EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(c["choices"][0]["text"], text.substr(0, text.find(stop)));

  json body = chat("hi", 5);
  body["n"] = 3;
  body["temperature"] = 1.0;
  body["seed"] = 42;
  body["logprobs"] = true;
  body["top_logprobs"] = 2;
  auto r = daemon_->post("/v1/chat/completions", body);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  ASSERT_EQ(j["choices"].size(), 3u);
  for (const json& ch : j["choices"]) {
    const json& lp = ch["logprobs"]["content"];
    ASSERT_EQ(lp.size(), 5u);
    EXPECT_LE(lp[0]["logprob"].get<double>(), 0.0);
    EXPECT_EQ(lp[0]["top_logprobs"].size(), 2u);
  }
  auto again = daemon_->post("/v1/chat/completions", body);
  EXPECT_EQ(json::parse(again->body)["choices"], j["choices"]);  // same seed, same answers
}

TEST_F(DaemonE2E, ErrorsUseTheOpenAiEnvelope) {
  httplib::Client c = daemon_->client();
  auto bad_json = c.Post("/v1/chat/completions", "{not json", "application/json");
  ASSERT_TRUE(bad_json);
  EXPECT_EQ(bad_json->status, 400);
  json bad_temp = chat("x", 2);
  bad_temp["temperature"] = 7;
  auto t = daemon_->post("/v1/chat/completions", bad_temp);
  EXPECT_EQ(t->status, 400);
  EXPECT_EQ(json::parse(t->body)["error"]["param"], "temperature");
  json no_model = chat("x", 2);
  no_model["model"] = "gpt-4";
  auto m = daemon_->post("/v1/chat/completions", no_model);
  EXPECT_EQ(m->status, 404);
  EXPECT_EQ(json::parse(m->body)["error"]["code"], "model_not_found");
  auto route = c.Get("/v1/nothing");
  EXPECT_EQ(route->status, 404);
  EXPECT_TRUE(json::parse(route->body).contains("error"));
  auto big = c.Post("/v1/chat/completions", std::string(9u << 20, ' '), "application/json");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413);
  EXPECT_TRUE(json::parse(big->body).contains("error"));
  json too_long = chat("x", 100000);
  auto l = daemon_->post("/v1/chat/completions", too_long);
  EXPECT_EQ(l->status, 400);
  EXPECT_EQ(json::parse(l->body)["error"]["code"], "context_length_exceeded");
}

TEST_F(DaemonE2E, SixteenConcurrentStreamsMatchTheirSoloRuns) {
  std::vector<std::string> solo(16);
  for (int i = 0; i < 16; ++i) {
    auto r = daemon_->post("/v1/chat/completions", chat("Story number " + std::to_string(i), 24));
    ASSERT_TRUE(r);
    solo[static_cast<std::size_t>(i)] = json::parse(r->body)["choices"][0]["message"]["content"];
  }
  std::vector<std::string> streamed(16);
  std::vector<std::thread> threads;
  for (int i = 0; i < 16; ++i)
    threads.emplace_back([&, i] {
      auto r = daemon_->post("/v1/chat/completions", chat("Story number " + std::to_string(i), 24, true));
      if (!r) return;
      for (const std::string& e : sse_events(r->body)) {
        if (e == "[DONE]") break;
        json c = json::parse(e);
        if (c["choices"][0]["delta"].contains("content"))
          streamed[static_cast<std::size_t>(i)] += c["choices"][0]["delta"]["content"].get<std::string>();
      }
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 16; ++i) EXPECT_EQ(streamed[static_cast<std::size_t>(i)], solo[static_cast<std::size_t>(i)]) << i;
}

double metric(const std::string& text, const std::string& name) {
  const std::size_t at = text.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::stod(text.substr(at + name.size() + 2));
}

TEST_F(DaemonE2E, DisconnectCancelsAndFreesBlocks) {
  ASSERT_EQ(daemon_->post("/v1/chat/completions", chat("first a whole answer", 8))->status, 200);
  {
    httplib::Client c = daemon_->client();
    int chunks = 0;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.headers = {{"Authorization", "Bearer " + daemon_->api_key}, {"Content-Type", "application/json"}};
    json body = chat("A very long story", 400, true);
    body["ignore_eos"] = true;  // a model that stops early must not end the stream before the hang-up
    req.body = body.dump();
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };  // hang up
    c.send(req);
    EXPECT_GE(chunks, 3);
  }
  double used = -1;
  for (int i = 0; i < 200; ++i) {
    used = metric(daemon_->client().Get("/metrics")->body, "airlock_kv_blocks_used");
    if (used == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(used, 0);
  const std::string m = daemon_->client().Get("/metrics")->body;
  for (const char* name : {"airlock_time_to_first_token_seconds_bucket", "airlock_inter_token_latency_seconds_count",
                           "airlock_e2e_request_latency_seconds_sum", "airlock_request_queue_time_seconds_count",
                           "airlock_requests_total{route=\"/v1/chat/completions\",status=\"200\"}",
                           "airlock_requests_total{route=\"/v1/chat/completions\",status=\"499\"}",
                           "airlock_generation_tokens_total", "airlock_prompt_tokens_total", "airlock_requests_running"})
    EXPECT_NE(m.find(name), std::string::npos) << name;
}

TEST_F(DaemonE2E, AuditLogRecordsRequestsAndRefusals) {
  httplib::Client anon = daemon_->client(false);
  EXPECT_EQ(anon.Get("/v1/models")->status, 401);
  EXPECT_EQ(daemon_->client().Get("/v1/models")->status, 200);
  auto r = daemon_->post("/v1/chat/completions", chat("audited", 6));
  ASSERT_EQ(r->status, 200);
  const std::string request_id = json::parse(r->body)["id"];
  json rows;
  for (int i = 0; i < 100; ++i) {  // the writer batches every 100 ms
    std::string out;
    ASSERT_EQ(run({AIRLOCK_CLI_PATH, "audit", "tail", "--last", "1000", "--json", "--state", enclave_->dir / "state"}, &out), 0);
    rows = json::parse(out);
    bool seen = false;
    for (const json& row : rows) seen = seen || row["request_id"] == request_id;
    if (seen) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  bool refused = false, models = false, chat_row = false;
  for (const json& row : rows) {
    refused = refused || (row["status"] == 401 && row["key"] == "" && row["route"] == "/v1/models");
    models = models || (row["status"] == 200 && row["key"] == "tester" && row["route"] == "/v1/models");
    if (row["request_id"] == request_id) {
      chat_row = true;
      EXPECT_EQ(row["key"], "tester");
      EXPECT_EQ(row["model"], "stories");
      EXPECT_GT(row["prompt_tokens"].get<int>(), 0);
      EXPECT_GT(row["completion_tokens"].get<int>(), 0);
    }
  }
  EXPECT_TRUE(refused) << rows.dump(1);
  EXPECT_TRUE(models) << rows.dump(1);
  EXPECT_TRUE(chat_row) << rows.dump(1);
  std::string out;
  EXPECT_EQ(run({AIRLOCK_CLI_PATH, "audit", "verify", "--state", enclave_->dir / "state"}, &out), 0) << out;
}

TEST_F(DaemonE2E, EmbeddingsFromTheBundlesStaticModel) {
  if (!have_embedder()) GTEST_SKIP() << "model2vec fixture not found (AIRLOCK_MODELS_DIR)";
  std::ifstream in(models_dir() + "/embeddings/model2vec-rs-fixtures/embeddings_short.json");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::vector<double> want = json::parse(ss.str())[0].get<std::vector<double>>();
  auto r = daemon_->post("/v1/embeddings", {{"model", "stories"}, {"input", json::array({"hello world", "", "Hello, World!"})}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 3u);
  EXPECT_EQ(j["data"][2]["index"], 2);
  const std::vector<double> got = j["data"][0]["embedding"].get<std::vector<double>>();
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6);
  EXPECT_EQ(j["data"][1]["embedding"], json::array({0.0, 0.0}));  // no tokens: zeros
  const std::vector<double> third = j["data"][2]["embedding"].get<std::vector<double>>();
  EXPECT_NEAR(std::hypot(third[0], third[1]), 1.0, 1e-6);  // normalised, as config.json says
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 0);
  // base64: the same floats, little-endian.
  auto b = daemon_->post("/v1/embeddings", {{"model", "stories"}, {"input", "hello world"}, {"encoding_format", "base64"}});
  ASSERT_EQ(b->status, 200);
  const std::string b64 = json::parse(b->body)["data"][0]["embedding"];
  std::string bin(64, '\0');
  size_t bin_len = 0;
  ASSERT_EQ(sodium_base642bin(reinterpret_cast<unsigned char*>(bin.data()), bin.size(), b64.c_str(), b64.size(), nullptr,
                              &bin_len, nullptr, sodium_base64_VARIANT_ORIGINAL), 0);
  ASSERT_EQ(bin_len, 8u);
  float f[2];
  std::memcpy(f, bin.data(), 8);
  EXPECT_NEAR(f[0], want[0], 1e-6);
  EXPECT_NEAR(f[1], want[1], 1e-6);
  // Refusals.
  EXPECT_EQ(daemon_->post("/v1/embeddings", {{"model", "nope"}, {"input", "x"}})->status, 404);
  auto tok = daemon_->post("/v1/embeddings", {{"model", "stories"}, {"input", json::array({json::array({1, 2})})}});
  EXPECT_EQ(tok->status, 400);
  EXPECT_EQ(json::parse(tok->body)["error"]["param"], "input");
  EXPECT_EQ(daemon_->post("/v1/embeddings", {{"model", "stories"}, {"input", "x"}, {"dimensions", 3}})->status, 400);
  EXPECT_EQ(daemon_->client(false).Post("/v1/embeddings", "{}", "application/json")->status, 401);
}

TEST(DaemonLifecycle, QueueFullAnswers429WithRetryAfter) {
  Enclave e;
  auto d = Daemon::start(e, "max_running = 1\nmax_waiting = 1\n");
  ASSERT_GT(d->port, 0) << d->log();
  std::atomic<int> ok{0}, limited{0};
  std::string retry_after;
  std::mutex mu;
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i)
    threads.emplace_back([&] {
      json body = chat("go", 200);
      body["ignore_eos"] = true;  // every admitted request holds its slot for 200 tokens
      auto r = d->post("/v1/chat/completions", body);
      if (!r) return;
      if (r->status == 200) ++ok;
      if (r->status == 429) {
        ++limited;
        std::lock_guard<std::mutex> lock(mu);
        retry_after = r->get_header_value("Retry-After");
        EXPECT_EQ(json::parse(r->body)["error"]["type"], "rate_limit_error");
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_GE(ok.load(), 1);
  EXPECT_GE(limited.load(), 1);
  EXPECT_EQ(retry_after, "1");
  EXPECT_EQ(d->stop(), 0);
}

TEST(DaemonLifecycle, SighupLoadsANewVersionAndRefusesATamperedOne) {
  Enclave e;
  auto d = Daemon::start(e, "verify_on_load = \"full\"\n");
  ASSERT_GT(d->port, 0) << d->log();
  auto version = [&] { return json::parse(d->client().Get("/v1/models")->body)["data"][0]["airlock"]["bundle_version"].get<int>(); };
  EXPECT_EQ(version(), 1);
  ASSERT_EQ(e.make_bundle(2), 0);
  ASSERT_EQ(e.import(2), 0);
  ::kill(d->pid, SIGHUP);
  int v = 0;
  for (int i = 0; i < 200 && (v = version()) != 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  EXPECT_EQ(v, 2);
  // Version 3 imported, then one byte of its weights changed in the store:
  // the reload refuses it and version 2 keeps serving.
  ASSERT_EQ(e.make_bundle(3), 0);
  ASSERT_EQ(e.import(3), 0);
  const std::string weights = e.dir / ("store/stories/3/" + model_path().substr(model_path().rfind('/') + 1));
  std::string bytes = testing::read_file(weights);
  bytes[bytes.size() / 2] ^= 0x20;
  ::chmod(weights.c_str(), 0640);
  testing::write_file(weights, bytes);
  ::kill(d->pid, SIGHUP);
  for (int i = 0; i < 200 && d->log().find("reload failed") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  EXPECT_NE(d->log().find("reload failed"), std::string::npos) << d->log();
  EXPECT_NE(d->log().find("chunk"), std::string::npos);
  EXPECT_EQ(version(), 2);
  EXPECT_EQ(d->post("/v1/chat/completions", chat("still serving", 4))->status, 200);
  EXPECT_EQ(d->stop(), 0);

  // A fresh start with only the tampered version chosen refuses to serve.
  auto refused = Daemon::start(e, "verify_on_load = \"full\"\nmodel = \"stories\"\n");
  (void)refused;  // version 3 is the most recent import: the daemon must not come up
  EXPECT_EQ(refused->port, 0);
  EXPECT_NE(refused->log().find("no model loaded"), std::string::npos) << refused->log();
}

// A forward pass that fails mid-stream (a test hook standing in for a
// device error): the stream gets an error event and ends without [DONE],
// /ready answers 503 while passes fail and 200 once one succeeds again.
TEST(DaemonLifecycle, ForwardFailureMidStream) {
#if !defined(AIRLOCK_TEST_HOOKS)
  GTEST_SKIP() << "built with AIRLOCK_TEST_HOOKS=OFF: the fault hook is not compiled in";
#endif
  Enclave e;
  // Step 1 is the warm-up, 2 the prefill, 3 the first decode; 4 and 5 fail.
  ::setenv("AIRLOCK_TEST_FAIL_STEPS", "4-5", 1);
  auto d = Daemon::start(e);
  ::unsetenv("AIRLOCK_TEST_FAIL_STEPS");
  ASSERT_GT(d->port, 0) << d->log();
  json body = chat("hi", 20, true);
  body["ignore_eos"] = true;
  auto r = d->post("/v1/chat/completions", body);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  std::vector<std::string> events = sse_events(r->body);
  ASSERT_GE(events.size(), 2u) << r->body;
  EXPECT_NE(events.back(), "[DONE]");
  json last = json::parse(events.back());
  ASSERT_TRUE(last.contains("error")) << events.back();
  EXPECT_EQ(last["error"]["type"], "server_error");
  auto not_ready = d->client().Get("/ready");  // its probe is step 5: fails
  ASSERT_TRUE(not_ready);
  EXPECT_EQ(not_ready->status, 503) << not_ready->body;
  EXPECT_EQ(not_ready->get_header_value("Retry-After"), "1");
  auto ready = d->client().Get("/ready");  // step 6 succeeds
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200) << ready->body;
  EXPECT_EQ(d->post("/v1/chat/completions", chat("again", 4))->status, 200);
  EXPECT_EQ(d->stop(), 0);
}

// systemd's notify protocol, with this test as the service manager: a
// datagram socket in NOTIFY_SOCKET receives READY=1 after the model is
// loaded, RELOADING=1 then READY=1 around SIGHUP, STOPPING=1 on SIGTERM, and
// WATCHDOG=1 pings when WATCHDOG_USEC is set.
TEST(DaemonLifecycle, SystemdNotifyProtocol) {
  Enclave e;
  const std::string sock_path = e.dir / "notify.sock";
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock_path.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  timeval tv{0, 200000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setenv("NOTIFY_SOCKET", sock_path.c_str(), 1);
  ::setenv("WATCHDOG_USEC", "400000", 1);
  auto d = Daemon::start(e);
  ::unsetenv("NOTIFY_SOCKET");
  ::unsetenv("WATCHDOG_USEC");
  ASSERT_GT(d->port, 0) << d->log();
  std::string got;
  auto wait_for = [&](const std::string& what) {
    for (int i = 0; i < 100 && got.find(what) == std::string::npos; ++i) {
      char buf[512];
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n > 0) got.append(buf, static_cast<std::size_t>(n)).push_back('|');
    }
    return got.find(what) != std::string::npos;
  };
  EXPECT_TRUE(wait_for("READY=1")) << got;
  EXPECT_TRUE(wait_for("WATCHDOG=1")) << got;
  got.clear();
  ::kill(d->pid, SIGHUP);
  EXPECT_TRUE(wait_for("RELOADING=1")) << got;
  EXPECT_TRUE(wait_for("READY=1")) << got;
  EXPECT_LT(got.find("RELOADING=1"), got.rfind("READY=1"));
  got.clear();
  ::kill(d->pid, SIGTERM);
  EXPECT_TRUE(wait_for("STOPPING=1")) << got;
  EXPECT_EQ(d->stop(), 0);
  ::close(fd);
}

// The official `openai` npm package (installed here with npm, into the build
// tree) used unchanged against airlockd.
TEST(DaemonLifecycle, OfficialOpenAiNodeSdk) {
  const std::string node_dir = AIRLOCK_NODE_DIR;
  const std::string module = node_dir + "/node_modules/openai/index.mjs";
  if (!testing::exists(module)) {
    std::string out;
    const int rc = run({"sh", "-c", "mkdir -p '" + node_dir + "' && cd '" + node_dir +
                                        "' && npm install --prefix . openai@5 --no-audit --no-fund --silent 2>&1"},
                       &out);
    if (rc != 0 || !testing::exists(module)) GTEST_SKIP() << "npm could not install the openai package: " << out;
  }
  Enclave e;
  auto d = Daemon::start(e);
  ASSERT_GT(d->port, 0) << d->log();
  auto full = Daemon::start(e, "max_running = 1\nmax_waiting = 1\n");  // a burst overflows the queue
  ASSERT_GT(full->port, 0) << full->log();
  ::setenv("AIRLOCK_BASE_URL", ("http://127.0.0.1:" + std::to_string(d->port) + "/v1").c_str(), 1);
  ::setenv("AIRLOCK_FULL_BASE_URL", ("http://127.0.0.1:" + std::to_string(full->port) + "/v1").c_str(), 1);
  ::setenv("AIRLOCK_API_KEY", e.api_key.c_str(), 1);
  ::setenv("AIRLOCK_OPENAI_MODULE", module.c_str(), 1);
  ::setenv("AIRLOCK_HAS_EMBEDDER", have_embedder() ? "1" : "0", 1);
  std::string out;
  const int rc = run({"node", AIRLOCK_SDK_SCRIPT}, &out);
  EXPECT_EQ(rc, 0) << out << d->log();
  EXPECT_NE(out.find("all checks passed"), std::string::npos) << out;
  EXPECT_EQ(d->stop(), 0);
  EXPECT_EQ(full->stop(), 0);
}

TEST(DaemonLifecycle, TlsWithClientCertificates) {
  // A refused handshake can make OpenSSL write to a closed socket: that must
  // be an error here, not a SIGPIPE that kills the test.
  ::signal(SIGPIPE, SIG_IGN);
  Enclave e;
  const std::string d = e.dir.path();
  // A CA, a server certificate for 127.0.0.1 and a client certificate, all made here.
  const std::string script =
      "set -e; cd '" + d + "'; "
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca 2>/dev/null; "
      "for who in server client; do "
      "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $who.key -out $who.csr -subj /CN=$who 2>/dev/null; "
      "printf 'subjectAltName=IP:127.0.0.1\n' > ext; "
      "openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 2 -extfile ext 2>/dev/null; done";
  ASSERT_EQ(run({"sh", "-c", script}), 0);
  auto daemon = Daemon::start(e, "[tls]\ncert = \"" + d + "/server.pem\"\nkey = \"" + d + "/server.key\"\nclient_ca = \"" + d +
                                     "/ca.pem\"\n");
  ASSERT_GT(daemon->port, 0) << daemon->log();
  httplib::SSLClient good("127.0.0.1", daemon->port, d + "/client.pem", d + "/client.key");
  good.set_ca_cert_path((d + "/ca.pem").c_str());
  good.enable_server_certificate_verification(true);
  good.set_default_headers({{"Authorization", "Bearer " + e.api_key}});
  auto r = good.Get("/v1/models");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  // No client certificate: the handshake is refused.
  httplib::SSLClient anonymous("127.0.0.1", daemon->port);
  anonymous.set_ca_cert_path((d + "/ca.pem").c_str());
  anonymous.enable_server_certificate_verification(true);
  EXPECT_FALSE(anonymous.Get("/health"));
  // Plain HTTP to the TLS port gets no HTTP answer.
  httplib::Client plain("127.0.0.1", daemon->port);
  auto p = plain.Get("/health");
  EXPECT_TRUE(!p || p->status != 200);
  EXPECT_EQ(daemon->stop(), 0);

  // A certificate that cannot be loaded stops the start, saying why.
  auto broken = Daemon::start(e, "[tls]\ncert = \"" + d + "/missing.pem\"\nkey = \"" + d + "/server.key\"\n");
  EXPECT_EQ(broken->port, 0);
  EXPECT_NE(broken->log().find("TLS: cannot load"), std::string::npos) << broken->log();
}

}  // namespace
}  // namespace airlock
