// IngestGate: at most `limit` slots at once, each given back exactly once
// (destroyed, released, moved from or assigned over), also from many
// threads at once and after the gate itself is gone.
#include "ingest_gate.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

namespace airlock::daemon {
namespace {

TEST(IngestGateTest, AtMostLimitSlotsAndEachGivenBackOnce) {
  IngestGate gate(2);
  EXPECT_EQ(gate.limit(), 2);
  IngestGate::Slot a = gate.try_enter(), b = gate.try_enter();
  EXPECT_TRUE(a);
  EXPECT_TRUE(b);
  EXPECT_EQ(gate.running(), 2);
  IngestGate::Slot c = gate.try_enter();
  EXPECT_FALSE(c);  // the third waits for nobody: refused
  EXPECT_EQ(gate.running(), 2);
  a.release();
  a.release();  // idempotent
  EXPECT_FALSE(a);
  EXPECT_EQ(gate.running(), 1);
  {
    IngestGate::Slot moved = std::move(b);  // moved from: b gives nothing back
    EXPECT_FALSE(b);
    EXPECT_EQ(gate.running(), 1);
  }
  EXPECT_EQ(gate.running(), 0);
  c = gate.try_enter();
  IngestGate::Slot d = gate.try_enter();
  EXPECT_EQ(gate.running(), 2);
  c = std::move(d);  // assigned over: c's own slot goes back
  EXPECT_EQ(gate.running(), 1);
  c = IngestGate::Slot();
  EXPECT_EQ(gate.running(), 0);
  EXPECT_EQ(IngestGate(0).limit(), 1);  // never unbounded, never closed
}

TEST(IngestGateTest, ASlotMayOutliveItsGate) {
  IngestGate::Slot kept;
  {
    IngestGate gate(1);
    kept = gate.try_enter();
    EXPECT_TRUE(kept);
  }
  kept.release();  // the count it points at is still alive
  EXPECT_FALSE(kept);
}

TEST(IngestGateTest, ConcurrentEntrantsNeverExceedTheLimit) {
  IngestGate gate(3);
  std::atomic<int> inside{0}, most{0}, admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        IngestGate::Slot s = gate.try_enter();
        if (!s) continue;
        ++admitted;
        const int now = ++inside;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        --inside;
      }
    });
  for (std::thread& t : threads) t.join();
  EXPECT_LE(most.load(), 3);
  EXPECT_GT(admitted.load(), 0);
  EXPECT_EQ(gate.running(), 0);
}

}  // namespace
}  // namespace airlock::daemon
