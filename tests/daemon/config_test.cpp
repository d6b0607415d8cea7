// airlockd.toml parsing: defaults, every key, and refusals that name the key.
#include <gtest/gtest.h>
#include <unistd.h>

#include "config.h"

namespace airlock::daemon {
namespace {

TEST(ConfigTest, DefaultsAreLocalAndSafe) {
  Result<Config> c = parse_config("", "t.toml");
  ASSERT_TRUE(c.is_ok());
  EXPECT_EQ(c->listen_host, "127.0.0.1");
  EXPECT_EQ(c->listen_port, 8080);
  EXPECT_FALSE(c->verify_full);
  EXPECT_FALSE(c->audit_text);
  EXPECT_TRUE(c->separate_reasoning);
  EXPECT_TRUE(c->tls_cert.empty());
  EXPECT_EQ(c->kv_cache_type, engine::KvType::kF16);
  EXPECT_EQ(c->device, engine::Device::kAuto);
  EXPECT_EQ(c->kv_cache_mib, 0u);  // "auto"
  Result<Config> a = parse_config("kv_cache_mib = 64\n", "t.toml");
  ASSERT_TRUE(a.is_ok());
  a = parse_config("kv_cache_mib = \"auto\"\n", "t.toml", *a);
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  EXPECT_EQ(a->kv_cache_mib, 0u);
}

TEST(ConfigTest, EveryKey) {
  Result<Config> c = parse_config(R"(
listen = "[::1]:9000"
store = "/s"
state = "/st"
trusted = "/t"
model = "m"
verify_on_load = "full"
device = "cpu"
threads = 4
kv_cache_mib = 256
kv_cache_type = "f32"
device_reserve_mib = 2048
tensor_parallel = 2
max_running = 8
max_waiting = 10
prefill_chunk = 128
max_body_bytes = 100000
drain_seconds = 5
http_threads = 32
stream_interval_ms = 20
reasoning = "inline"
audit_text = true
[tls]
cert = "/c.pem"
key = "/k.pem"
client_ca = "/ca.pem"
)", "t.toml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->listen_host, "::1");
  EXPECT_EQ(c->listen_port, 9000);
  EXPECT_EQ(c->store, "/s");
  EXPECT_EQ(c->model, "m");
  EXPECT_TRUE(c->verify_full);
  EXPECT_EQ(c->threads, 4);
  EXPECT_EQ(c->device, engine::Device::kCpu);
  EXPECT_EQ(c->kv_cache_mib, 256u);
  EXPECT_EQ(c->device_reserve_mib, 2048u);
  EXPECT_EQ(c->tensor_parallel, 2);
  EXPECT_EQ(c->kv_cache_type, engine::KvType::kF32);
  EXPECT_EQ(c->max_waiting, 10);
  EXPECT_EQ(c->http_threads, 32);
  EXPECT_EQ(c->stream_interval_ms, 20);
  EXPECT_TRUE(c->audit_text);
  EXPECT_FALSE(c->separate_reasoning);
  EXPECT_EQ(c->tls_client_ca, "/ca.pem");
}

// Memory for request bodies: "auto" is 1 GiB, or four bodies of
// max_body_bytes and their trees where that is more; a number is MiB.
TEST(ConfigTest, BodyMemory) {
  Result<Config> d = parse_config("", "t.toml");
  ASSERT_TRUE(d.is_ok());
  EXPECT_EQ(body_memory_bytes(*d), std::uint64_t{1} << 30);
  Result<Config> big = parse_config("max_body_bytes = 67108864\nmax_body_memory_mib = \"auto\"\n", "t.toml");
  ASSERT_TRUE(big.is_ok()) << big.status().to_string();
  EXPECT_EQ(body_memory_bytes(*big), std::uint64_t{8} << 30);  // 4 x 32 x 64 MiB
  Result<Config> set = parse_config("max_body_memory_mib = 300\n", "t.toml");
  ASSERT_TRUE(set.is_ok()) << set.status().to_string();
  EXPECT_EQ(body_memory_bytes(*set), std::uint64_t{300} << 20);
}

// A group spanning machines: node 0 serves, the others follow.
TEST(ConfigTest, NodesOfAGroupSpanningMachines) {
  Result<Config> c = parse_config("device = \"cuda\"\ntensor_parallel = 8\nnodes = 2\nnode_rank = 1\n"
                                  "nccl_root = \"[fd00::10]:29500\"\n", "t.toml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->nodes, 2);
  EXPECT_EQ(c->node_rank, 1);
  EXPECT_EQ(c->nccl_root, "[fd00::10]:29500");
  Result<Config> one = parse_config("", "t.toml");
  ASSERT_TRUE(one.is_ok());
  EXPECT_EQ(one->nodes, 1);
  EXPECT_EQ(one->node_rank, 0);
}

TEST(ConfigTest, RefusalsNameTheKey) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"lissten = \"127.0.0.1:1\"", "unknown key 'lissten'"},
      {"listen = \"localhost:8080\"", "not a numeric IP address"},
      {"listen = \"127.0.0.1\"", "HOST:PORT"},
      {"listen = \"127.0.0.1:70000\"", "bad port"},
      {"listen = 8080", "listen"},
      {"threads = -1", "threads"},
      {"threads = \"2\"", "threads: must be an integer"},
      {"verify_on_load = \"some\"", "verify_on_load"},
      {"audit_text = 1", "audit_text"},
      {"reasoning = \"hidden\"", "reasoning"},
      {"reasoning = true", "reasoning"},
      {"prefix_cache = \"global\"", "prefix_cache"},
      {"kv_cache_type = \"q8_0\"", "kv_cache_type: must be \"f16\" or \"f32\""},
      {"kv_cache_type = 16", "kv_cache_type: must be a string"},
      {"device = \"gpu\"", "device: must be \"auto\", \"cpu\" or \"cuda\""},
      {"[tls]\ncert = \"/c\"", "cert and key go together"},
      {"[tls]\nclient_ca = \"/c\"", "client_ca needs"},
      {"[tls]\nkeyfile = \"/c\"", "unknown key 'keyfile'"},
      {"max_body_memory_mib = \"lots\"", "max_body_memory_mib: must be \"auto\" or a number of MiB"},
      {"max_body_memory_mib = 0", "max_body_memory_mib"},
      {"max_body_memory_mib = 255", "max_body_memory_mib: must hold one body of max_body_bytes and its JSON tree (32 x "
                                    "max_body_bytes: 256 MiB)"},
      {"max_body_bytes = 16777216\nmax_body_memory_mib = 511", "(32 x max_body_bytes: 512 MiB)"},
      {"max_running = 0", "max_running"},
      {"stream_interval_ms = -1", "stream_interval_ms"},
      {"stream_interval_ms = 1001", "stream_interval_ms"},
      {"kv_cache_mib = \"all\"", "kv_cache_mib: must be \"auto\" or a number of MiB"},
      {"kv_cache_mib = 0", "kv_cache_mib"},
      {"device_reserve_mib = -1", "device_reserve_mib"},
      {"tensor_parallel = 0", "tensor_parallel"},
      {"nodes = 0", "nodes"},
      {"nodes = 2\nnode_rank = 2\nnccl_root = \"10.0.0.1:29500\"", "node_rank: must be below nodes (2)"},
      {"node_rank = 1", "node_rank: must be below nodes (1)"},
      {"nodes = 2", "nccl_root: is required with nodes > 1"},
      {"nodes = 2\nnccl_root = \"gpu0:29500\"", "names are not resolved"},
      {"nodes = 2\nnccl_root = \"10.0.0.1\"", "nccl_root"},
      {"nodes = 2\ndevice = \"cpu\"\nnccl_root = \"10.0.0.1:29500\"", "nodes: a group spanning machines needs"},
      {"store = [", "t.toml:1"},
      {"http_threads = 80", "http_threads: must be larger than max_running + max_waiting (80)"},
      {"max_running = 4\nmax_waiting = 4\nhttp_threads = 8", "larger than max_running + max_waiting (8)"},
      {"http_threads = \"many\"", "http_threads: must be \"auto\" or a number"},
      {"max_waiting = 16385", "max_waiting"},
  };
  for (const auto& [text, want] : cases) {
    Result<Config> c = parse_config(text, "t.toml");
    ASSERT_FALSE(c.is_ok()) << text;
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find(want), std::string::npos) << text << " -> " << c.status().message();
  }
}

// Every admitted request holds a connection thread, so "auto" (the
// default) sizes the pool from max_running + max_waiting, with spares.
TEST(ConfigTest, HttpThreadsFollowTheAdmittedRequests) {
  Result<Config> d = parse_config("", "t.toml");
  ASSERT_TRUE(d.is_ok());
  EXPECT_EQ(d->http_threads, 0);
  EXPECT_EQ(http_thread_count(*d), 16 + 64 + kSpareHttpThreads);
  Result<Config> big = parse_config("max_running = 32\nmax_waiting = 1000\nhttp_threads = \"auto\"", "t.toml");
  ASSERT_TRUE(big.is_ok()) << big.status().to_string();
  EXPECT_EQ(http_thread_count(*big), 32 + 1000 + kSpareHttpThreads);
  Result<Config> set = parse_config("max_running = 4\nmax_waiting = 4\nhttp_threads = 9", "t.toml");
  ASSERT_TRUE(set.is_ok()) << set.status().to_string();
  EXPECT_EQ(http_thread_count(*set), 9);
  // The pool grows past them while they are busy, up to a cap: 1024, or
  // the kept threads when there are more.
  EXPECT_EQ(http_thread_cap(*d), kMaxHttpThreads);
  EXPECT_EQ(http_thread_cap(*set), kMaxHttpThreads);
  EXPECT_EQ(http_thread_cap(*big), 32 + 1000 + kSpareHttpThreads);
}

// stream_interval_ms: "auto" by default, 20 ms while the model computes on
// the host's cores and 0 on a GPU; a number is taken as it is, 0 included.
TEST(ConfigTest, StreamIntervalFollowsWhereTheModelComputes) {
  Result<Config> d = parse_config("", "t.toml");
  ASSERT_TRUE(d.is_ok());
  EXPECT_EQ(d->stream_interval_ms, kStreamIntervalAuto);
  EXPECT_EQ(stream_interval(*d, true), std::chrono::milliseconds(20));
  EXPECT_EQ(stream_interval(*d, false), std::chrono::milliseconds(0));
  Result<Config> zero = parse_config("stream_interval_ms = 0\n", "t.toml");
  ASSERT_TRUE(zero.is_ok()) << zero.status().to_string();
  EXPECT_EQ(stream_interval(*zero, true), std::chrono::milliseconds(0));
  EXPECT_EQ(stream_interval(*zero, false), std::chrono::milliseconds(0));
  Result<Config> five = parse_config("stream_interval_ms = 5\n", "t.toml");
  ASSERT_TRUE(five.is_ok()) << five.status().to_string();
  EXPECT_EQ(stream_interval(*five, true), std::chrono::milliseconds(5));
  EXPECT_EQ(stream_interval(*five, false), std::chrono::milliseconds(5));
  // "auto" written out puts a value of an earlier file back to the default.
  Result<Config> back = parse_config("stream_interval_ms = \"auto\"\n", "t.toml", *five);
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  EXPECT_EQ(back->stream_interval_ms, kStreamIntervalAuto);
  for (const char* bad : {"stream_interval_ms = \"fast\"\n", "stream_interval_ms = \"20\"\n", "stream_interval_ms = 2.5\n"}) {
    Result<Config> r = parse_config(bad, "t.toml");
    ASSERT_FALSE(r.is_ok()) << bad;
    EXPECT_NE(r.status().message().find("stream_interval_ms"), std::string::npos) << r.status().message();
  }
}

TEST(ConfigTest, RagTable) {
  Result<Config> c = parse_config(
      "[rag]\nenabled = false\ndatabase = \"/srv/rag.db\"\nchunk_tokens = 128\nchunk_overlap = 16\ntop_k = 3\n"
      "rerank_candidates = 0\nmin_similarity = 0.7\nmin_term_coverage = 1\nann_threshold = 5000\nrefusal = \"Ask the help desk.\"\n"
      "query_prefix = \"search_query: \"\ndocument_prefix = \"search_document: \"\nmax_concurrent_ingests = 8\n"
      "upload_timeout_ms = 5000\n"
      "admins = [\"ops\"]\n[rag.groups]\nhr = [\"app-a\", \"app-b\"]\n",
      "t.toml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_FALSE(c->rag.enabled);
  EXPECT_EQ(c->rag.database, "/srv/rag.db");
  EXPECT_EQ(c->rag.chunk_tokens, 128);
  EXPECT_EQ(c->rag.chunk_overlap, 16);
  EXPECT_EQ(c->rag.top_k, 3);
  EXPECT_EQ(c->rag.rerank_candidates, 0);
  EXPECT_DOUBLE_EQ(c->rag.min_similarity, 0.7);
  EXPECT_DOUBLE_EQ(c->rag.min_term_coverage, 1.0);
  EXPECT_EQ(c->rag.ann_threshold, 5000u);
  EXPECT_EQ(c->rag.refusal, "Ask the help desk.");
  EXPECT_EQ(c->rag.query_prefix, "search_query: ");
  EXPECT_EQ(c->rag.document_prefix, "search_document: ");
  EXPECT_EQ(c->rag.admins, std::vector<std::string>{"ops"});
  EXPECT_EQ(c->rag.groups.at("hr"), (std::vector<std::string>{"app-a", "app-b"}));
  EXPECT_EQ(c->rag.max_concurrent_ingests, 8);
  EXPECT_EQ(c->rag.upload_timeout_ms, 5000);
  // Defaults without the table.
  Result<Config> d = parse_config("", "t.toml");
  EXPECT_TRUE(d->rag.enabled);
  EXPECT_EQ(d->rag.chunk_tokens, 256);
  EXPECT_EQ(d->rag.rerank_candidates, 20);
  EXPECT_EQ(d->rag.query_prefix, "");
  EXPECT_EQ(d->rag.document_prefix, "");
  EXPECT_EQ(d->rag.max_concurrent_ingests, 2);
  EXPECT_EQ(d->rag.upload_timeout_ms, 30000);
  // The bounds of max_concurrent_ingests are allowed.
  for (const char* ok : {"[rag]\nmax_concurrent_ingests = 1", "[rag]\nmax_concurrent_ingests = 1024",
                         "[rag]\nupload_timeout_ms = 1000", "[rag]\nupload_timeout_ms = 3600000"})
    EXPECT_TRUE(parse_config(ok, "t.toml").is_ok()) << ok;
  for (const auto& [text, want] : std::vector<std::pair<std::string, std::string>>{
           {"[rag]\nchunk_token = 1", "rag.chunk_token: unknown key"},
           {"[rag]\nchunk_tokens = 8", "rag.chunk_tokens: must be between"},
           {"[rag]\nchunk_tokens = 64\nchunk_overlap = 64", "chunk_overlap: must be smaller"},
           {"[rag]\nmin_similarity = 2.5", "rag.min_similarity"},
           {"[rag]\nrerank_candidates = 101", "rag.rerank_candidates: must be between"},
           {"[rag]\nrerank_candidates = -1", "rag.rerank_candidates: must be between"},
           {"[rag]\nmin_similarity = \"high\"", "must be a number"},
           {"[rag]\nadmins = \"ops\"", "rag.admins"},
           {"[rag]\nadmins = [\"has space\"]", "rag.admins"},
           {"[rag]\ngroups = 1", "rag.groups"},
           {"[rag.groups]\nhr = [1]", "rag.groups.hr"},
           {"[rag]\nrefusal = \"\"", "rag.refusal"},
           {"[rag]\nquery_prefix = 1", "rag.query_prefix: must be a text"},
           {"[rag]\ndocument_prefix = \"" + std::string(1025, 'x') + "\"", "rag.document_prefix: must be a text"},
           {"rag = 1", "rag: must be a table"},
           // No bound at all (0) would let every client ingest at once.
           {"[rag]\nmax_concurrent_ingests = 0", "rag.max_concurrent_ingests: must be between 1 and 1024"},
           {"[rag]\nmax_concurrent_ingests = 1025", "rag.max_concurrent_ingests: must be between 1 and 1024"},
           {"[rag]\nmax_concurrent_ingests = -1", "rag.max_concurrent_ingests: must be between"},
           {"[rag]\nmax_concurrent_ingests = 2.5", "rag.max_concurrent_ingests: must be an integer"},
           {"[rag]\nmax_concurrent_ingests = \"2\"", "rag.max_concurrent_ingests: must be an integer"},
           {"max_concurrent_ingests = 2", "unknown key 'max_concurrent_ingests'"},  // a [rag] key
           // Under a second would cut off uploads on a busy but healthy link.
           {"[rag]\nupload_timeout_ms = 999", "rag.upload_timeout_ms: must be between 1000 and 3600000"},
           {"[rag]\nupload_timeout_ms = 3600001", "rag.upload_timeout_ms: must be between"},
           {"[rag]\nupload_timeout_ms = \"30s\"", "rag.upload_timeout_ms: must be an integer"},
       }) {
    Result<Config> bad = parse_config(text, "t.toml");
    ASSERT_FALSE(bad.is_ok()) << text;
    EXPECT_NE(bad.status().message().find(want), std::string::npos) << text << " -> " << bad.status().message();
  }
}

TEST(ConfigTest, MissingFile) {
  EXPECT_EQ(load_config("/nonexistent/airlockd.toml", true).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(load_config("/nonexistent/airlockd.toml", false).is_ok());
  // There but not readable as a file: an error even where it is optional
  // (it used to mean "the defaults").
  EXPECT_EQ(load_config("/", false).status().code(), StatusCode::kInvalidArgument);
  char dir_tmpl[] = "/tmp/airlock-config-XXXXXX";
  const std::string dir = ::mkdtemp(dir_tmpl);
  const std::string link = dir + "/airlockd.toml";
  ASSERT_EQ(::symlink((dir + "/gone.toml").c_str(), link.c_str()), 0);
  Result<Config> dangling = load_config(link, false);
  EXPECT_EQ(dangling.status().code(), StatusCode::kNotFound);
  EXPECT_NE(dangling.status().message().find("symbolic link"), std::string::npos) << dangling.status().to_string();
  ::unlink(link.c_str());
  ::rmdir(dir.c_str());
  // A pipe (--config <(...)) is read like a file.
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const std::string text = "listen = \"127.0.0.1:9001\"\n";
  ASSERT_EQ(::write(fds[1], text.data(), text.size()), static_cast<ssize_t>(text.size()));
  ::close(fds[1]);
  Result<Config> piped = load_config("/proc/self/fd/" + std::to_string(fds[0]), true);
  ::close(fds[0]);
  ASSERT_TRUE(piped.is_ok()) << piped.status().to_string();
  EXPECT_EQ(piped->listen_port, 9001);
  EXPECT_EQ(load_config("/proc/self/status/airlockd.toml", false).status().code(), StatusCode::kNotFound);  // ENOTDIR
}

}  // namespace
}  // namespace airlock::daemon
