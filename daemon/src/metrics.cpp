#include "metrics.h"

#include <cmath>
#include <cstdio>

namespace airlock::daemon {
namespace {

std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

void add(std::atomic<double>& a, double v) {
  double cur = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {
  }
}

}  // namespace

void Counter::inc(double v) { add(value_, v); }

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), buckets_(new std::atomic<std::uint64_t>[bounds_.size() + 1]) {
  for (std::size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0);
}

void Histogram::observe(double v) {
  std::size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  add(sum_, v);
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<double> latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
}

Counter& Metrics::counter(const std::string& name, const std::string& help, const std::string& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  Family& f = families_[name];
  f.type = "counter";
  f.help = help;
  auto& slot = f.counters[labels];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

Gauge& Metrics::gauge(const std::string& name, const std::string& help, const std::string& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  Family& f = families_[name];
  f.type = "gauge";
  f.help = help;
  auto& slot = f.gauges[labels];
  if (!slot) slot = std::make_unique<Gauge>();
  return *slot;
}

Histogram& Metrics::histogram(const std::string& name, const std::string& help, std::vector<double> bounds) {
  std::lock_guard<std::mutex> lock(mu_);
  Family& f = families_[name];
  f.type = "histogram";
  f.help = help;
  if (!f.histogram) f.histogram = std::make_unique<Histogram>(std::move(bounds));
  return *f.histogram;
}

std::string Metrics::render() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto& entry : families_) {
    const std::string& name = entry.first;
    const Family& f = entry.second;
    out += "# HELP " + name + " " + f.help + "\n# TYPE " + name + " " + f.type + "\n";
    auto sample = [&](const std::string& suffix, const std::string& labels, double v) {
      out += name + suffix + (labels.empty() ? "" : "{" + labels + "}") + " " + number(v) + "\n";
    };
    for (const auto& [labels, c] : f.counters) sample("", labels, c->value());
    for (const auto& [labels, g] : f.gauges) sample("", labels, g->value());
    if (f.histogram) {
      const Histogram& h = *f.histogram;
      std::uint64_t cumulative = 0;
      for (std::size_t i = 0; i < h.bounds().size(); ++i) {
        cumulative += h.bucket(i);
        sample("_bucket", "le=\"" + number(h.bounds()[i]) + "\"", static_cast<double>(cumulative));
      }
      cumulative += h.bucket(h.bounds().size());
      sample("_bucket", "le=\"+Inf\"", static_cast<double>(cumulative));
      sample("_sum", "", h.sum());
      sample("_count", "", static_cast<double>(cumulative));
    }
  }
  return out;
}

std::string label_value(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace airlock::daemon
