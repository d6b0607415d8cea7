// Prometheus text exposition of airlockd's metrics.
#include <gtest/gtest.h>

#include <thread>

#include "metrics.h"

namespace airlock::daemon {
namespace {

TEST(MetricsTest, RendersCountersGaugesAndCumulativeHistograms) {
  Metrics m;
  m.counter("req_total", "Requests", "status=\"200\"").inc();
  m.counter("req_total", "Requests", "status=\"200\"").inc(2);
  m.counter("req_total", "Requests", "status=\"429\"").inc();
  m.gauge("running", "Running").set(3);
  Histogram& h = m.histogram("lat_seconds", "Latency", {0.1, 1});
  h.observe(0.05);
  h.observe(0.5);
  h.observe(5);
  const std::string text = m.render();
  EXPECT_NE(text.find("# TYPE req_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("req_total{status=\"200\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("req_total{status=\"429\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("# TYPE running gauge\nrunning 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("lat_seconds_bucket{le=\"0.10000000000000001\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("lat_seconds_bucket{le=\"1\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("lat_seconds_bucket{le=\"+Inf\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("lat_seconds_sum 5.5499999999999998\n"), std::string::npos) << text;
  EXPECT_NE(text.find("lat_seconds_count 3\n"), std::string::npos);
  EXPECT_EQ(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

TEST(MetricsTest, ConcurrentUpdatesAreNotLost) {
  Metrics m;
  Counter& c = m.counter("n_total", "N");
  Histogram& h = m.histogram("h", "H", latency_buckets());
  std::vector<std::thread> t;
  for (int i = 0; i < 4; ++i)
    t.emplace_back([&] {
      for (int k = 0; k < 10000; ++k) {
        c.inc();
        h.observe(0.002);
      }
    });
  for (auto& x : t) x.join();
  EXPECT_EQ(c.value(), 40000);
  EXPECT_EQ(h.count(), 40000u);
  EXPECT_NEAR(h.sum(), 80.0, 1e-6);
}

}  // namespace
}  // namespace airlock::daemon
